"""Data loaders for detection: aspect-ratio grouped, seeded, resumable, shardable.

Training (:func:`build_train_loader`) is an infinite stream of batches. The index stream is a pure
function of ``(seed, rank, world_size)``: epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])``, padded to a multiple of ``world_size`` (as
``DistributedSampler`` does) and dealt out ``rank::world_size``; the indices then fall into two
aspect-ratio groups (``w >= h`` and ``w < h``) and a group emits a batch whenever it holds
``images_per_batch`` images, carrying leftovers into the next epoch. ``start_iter=k`` skips the
first ``k`` batches without loading them, so a resumed run sees exactly the batches it would have
seen. Each item's augmentation is seeded from its position in the stream, not from worker
scheduling, so the images are reproducible too (for :mod:`detres.data.transforms`).

``images_per_batch`` is the batch size of ONE process (rank); the global batch is
``images_per_batch * world_size``.

Testing (:func:`build_test_loader`) is finite and ordered; rank ``r`` gets a contiguous slice of
the data set (no padding, no duplicates), and the evaluators gather the slices.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, Subset

from detres.data.transforms import set_sample_seed

__all__ = [
    "collate",
    "get_aspect_ratios",
    "GroupedInfiniteBatchSampler",
    "build_train_loader",
    "build_test_loader",
    "shard_range",
    "worker_init",
]

logger = logging.getLogger(__name__)


def collate(batch: Sequence[tuple[Any, dict]]) -> tuple[list, list[dict]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])``; images keep their own sizes."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def worker_init(worker_id: int) -> None:
    """DataLoader worker setup: one OpenCV and one torch thread per worker, seeded global RNGs."""
    import random

    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def get_aspect_ratios(dataset: Dataset) -> list[float]:
    """``width / height`` per item, cheaply when the data set (or what it wraps) has
    ``aspect_ratios()``; otherwise by reading every item once (slow, warned)."""
    if hasattr(dataset, "aspect_ratios"):
        return list(dataset.aspect_ratios())
    if isinstance(dataset, Subset):
        parent = get_aspect_ratios(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [r for d in dataset.datasets for r in get_aspect_ratios(d)]
    logger.warning("%s has no aspect_ratios(); reading every item to group by aspect ratio", type(dataset).__name__)
    ratios = []
    for i in range(len(dataset)):
        image = dataset[i][0]
        h, w = (image.shape[-2:] if isinstance(image, torch.Tensor) else image.shape[:2])
        ratios.append(w / h)
    return ratios


def _worker_context(num_workers: int):
    """Worker processes start from a fresh interpreter (forkserver, or spawn where it is missing):
    a plain fork copies OpenCV's thread pool without its threads, and ``cv2.setNumThreads`` in the
    child then waits forever on the dead pool."""
    if num_workers <= 0:
        return None
    import multiprocessing as mp

    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class GroupedInfiniteBatchSampler:
    """Infinite batches of ``(index, sample_seed)`` pairs; see the module docstring."""

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


class _SeededDataset(Dataset):
    """Reads ``dataset[index]`` after seeding the transforms with the item's stream seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        set_sample_seed(seed)
        try:
            return self.dataset[index]
        finally:
            set_sample_seed(None)


def build_train_loader(dataset: Dataset, *, images_per_batch: int, num_workers: int = 0, seed: int = 0,
                       start_iter: int = 0, aspect_ratio_grouping: bool = True, rank: int | None = None,
                       world_size: int | None = None) -> Iterator[tuple[list, list[dict]]]:
    """Infinite iterator of ``(images, targets)`` batches (``images_per_batch`` per process).

    ``rank``/``world_size`` default to torch.distributed's when it is initialised, else 0/1.
    Batch ``k`` of a run started with ``start_iter=s`` is batch ``s + k`` of a run from 0.
    """
    rank, world_size = _dist_info(rank, world_size)
    if aspect_ratio_grouping:
        group_ids = [0 if r >= 1.0 else 1 for r in get_aspect_ratios(dataset)]
    else:
        group_ids = [0] * len(dataset)
    sampler = GroupedInfiniteBatchSampler(group_ids, images_per_batch, seed=seed, rank=rank,
                                          world_size=world_size, start_iter=start_iter)
    loader = DataLoader(
        _SeededDataset(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init if num_workers > 0 else None,
        multiprocessing_context=_worker_context(num_workers),
        generator=torch.Generator().manual_seed(seed * 1000 + rank),
        pin_memory=False,
    )
    return iter(loader)


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous slice of ``range(n)`` that ``rank`` evaluates (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, rank: int | None = None,
                      world_size: int | None = None) -> DataLoader:
    """Finite, ordered loader over this rank's contiguous slice of ``dataset``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size = _dist_info(rank, world_size)
    indices = list(shard_range(len(dataset), rank, world_size))
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(indices, batch_size, drop_last=False),
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init if num_workers > 0 else None,
        multiprocessing_context=_worker_context(num_workers),
        persistent_workers=num_workers > 0,  # evaluated again and again during training: start workers once
    )
