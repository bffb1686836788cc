"""Samplers: which items each process reads, in which order, at which iteration.

Training samplers are infinite and resumable: the stream of batches is a pure function of
``(seed, rank, world_size)``, and ``start_iter=k`` skips the first ``k`` batches without reading any
image, so a resumed run sees exactly the batches an uninterrupted one would have seen.

- :class:`GroupedInfiniteBatchSampler` (every task's training loader): aspect-ratio groups (one group for
  classification), padding like ``DistributedSampler``, and a per-item augmentation seed.

Test data is split by ONE policy for every task: :func:`shard_range`, a contiguous slice per rank
(no padding, no duplicates, sizes differing by at most one), so the gathered results cover each image
exactly once, in data-set order.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

__all__ = ["GroupedInfiniteBatchSampler", "shard_range"]


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous slice of ``range(n)`` that ``rank`` evaluates (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class GroupedInfiniteBatchSampler:
    """Infinite batches of ``(index, sample_seed)`` pairs, one aspect-ratio group per batch.

    Epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed, e])``, padded to a multiple
    of ``world_size`` and dealt out ``rank::world_size``; indices then fall into their group (``group_ids``)
    and a group emits a batch whenever it holds ``batch_size`` items, carrying leftovers into the next
    epoch. Each item's ``sample_seed`` depends on its position in the stream only, so augmentations are
    reproducible whatever the worker scheduling.
    """

    def __init__(self, group_ids: Sequence[int], batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_iter: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"images_per_batch must be >= 1, got {batch_size}")
        if len(group_ids) == 0:
            raise ValueError("cannot build a training loader on an empty data set")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_iter = start_iter
        self.shuffle = shuffle

    def _epoch_shard(self, epoch: int) -> np.ndarray:
        n = len(self.group_ids)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        total = math.ceil(n / self.world_size) * self.world_size
        if total > n:
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[self.rank::self.world_size]

    def _sample_seed(self, epoch: int, pos: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.rank, epoch, pos]).generate_state(1)[0])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int, int]]] = {}
        emitted = 0
        epoch = 0
        while True:
            for pos, idx in enumerate(self._epoch_shard(epoch)):
                bucket = buckets.setdefault(int(self.group_ids[idx]), [])
                bucket.append((int(idx), epoch, pos))
                if len(bucket) == self.batch_size:
                    batch = list(bucket)
                    bucket.clear()
                    emitted += 1
                    if emitted > self.start_iter:
                        yield [(i, self._sample_seed(e, p)) for i, e, p in batch]
            epoch += 1
