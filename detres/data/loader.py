"""The data loaders of every task (detection, ImageNet, CIFAR-10): seeded, resumable, shardable.

Training (:func:`build_train_loader`) is an infinite stream of batches drawn by
:class:`~detres.data.samplers.GroupedInfiniteBatchSampler`: a pure function of ``(seed, rank,
world_size)``, resumable at any iteration without reading skipped images. Each item is read with
``dataset.get(index, seed=sample_seed)``, so its augmentation depends on its place in the stream, not
on worker scheduling (a data set without ``get`` is indexed plainly and its augmentation is not seeded).

``images_per_batch`` is the batch size of ONE process (rank); the global batch is
``images_per_batch * world_size``.

Detection batches are lists (:func:`collate`: images keep their sizes) grouped by aspect ratio;
classification passes ``collate_fn=stack_collate`` (``(images [B, ...], labels [B])``) and
``aspect_ratio_grouping=False``. The data sets' ``get(index, seed=...)`` is the one augmentation contract.

Testing (:func:`build_test_loader`) is finite and ordered; rank ``r`` reads its
:func:`~detres.data.samplers.shard_range` slice, and the evaluators gather the slices.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, Subset, default_collate

from detres.data.samplers import GroupedInfiniteBatchSampler, shard_range
from detres.utils.comm import resolve_rank_world

__all__ = ["collate", "stack_collate", "get_aspect_ratios", "describe_dataset", "build_train_loader", "build_test_loader", "worker_init",
           "worker_context"]

logger = logging.getLogger(__name__)


def collate(batch: Sequence[tuple[Any, dict]]) -> tuple[list, list[dict]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])``; images keep their own sizes."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def stack_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(image, label), ...] -> (images [B, ...] stacked, labels int64 [B])`` (classification)."""
    images, labels = default_collate(batch)
    return images, labels


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


def worker_context(num_workers: int):
    """Worker processes start from a fresh interpreter (forkserver, or spawn where it is missing):
    a plain fork copies OpenCV's thread pool without its threads, and ``cv2.setNumThreads`` in the
    child then waits forever on the dead pool."""
    if num_workers <= 0:
        return None
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # The server imports torch and the data code once; each worker forked from it shares those pages instead of
    # importing them again (about 0.45 GB of private memory per worker otherwise: 32 workers on an 8-GPU node).
    # The server only imports OpenCV and never runs its thread pool, so the workers' cv2.setNumThreads is safe.
    ctx.set_forkserver_preload(["torch", "detres.data.loader", "detres.data.transforms"])
    return ctx


class _SeededDataset(Dataset):
    """Reads ``dataset.get(index, seed=...)`` with the item's stream seed (``dataset[index]`` without ``get``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        get = getattr(self.dataset, "get", None)
        return get(index, seed=seed) if get is not None else self.dataset[index]


def describe_dataset(dataset: Any) -> str:
    """Which data a data set is, for messages: its class, split and folder or annotation file (a concatenation
    names each part), e.g. ``VOCDetection split 'trainval' in data/VOC2007``."""
    parts = getattr(dataset, "datasets", None)
    if isinstance(parts, (list, tuple)) and parts:
        return " + ".join(describe_dataset(d) for d in parts)
    inner = getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:  # a wrapper (subset, seeded view)
        return describe_dataset(inner)
    text = type(dataset).__name__
    split = getattr(dataset, "split", None)
    if isinstance(split, str):
        text += f" split {split!r}"
    where = getattr(dataset, "ann_file", None) or getattr(dataset, "root", None)
    if where is not None:
        text += f" in {where}"
    return text


def build_train_loader(dataset: Dataset, *, images_per_batch: int, num_workers: int = 0, seed: int = 0,
                       start_iter: int = 0, aspect_ratio_grouping: bool = True, rank: int | None = None,
                       world_size: int | None = None, collate_fn: Callable = collate, pin_memory: bool = False
                       ) -> Iterator[Any]:
    """Infinite iterator of ``collate_fn`` batches (``images_per_batch`` items per process): detection's
    ``(images, targets)`` lists by default.

    ``rank``/``world_size`` default to torch.distributed's when it is initialised, else 0/1.
    Batch ``k`` of a run started with ``start_iter=s`` is batch ``s + k`` of a run from 0.
    """
    rank, world_size = resolve_rank_world(rank, world_size)
    if len(dataset) == 0:
        raise ValueError(f"cannot build a training loader: {describe_dataset(dataset)} has no training images "
                         "(check the split's list, the folder, and that its images have objects of the classes)")
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
        collate_fn=collate_fn,
        worker_init_fn=worker_init if num_workers > 0 else None,
        multiprocessing_context=worker_context(num_workers),
        generator=torch.Generator().manual_seed(seed * 1000 + rank),
        pin_memory=pin_memory,
    )
    return iter(loader)


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, rank: int | None = None,
                      world_size: int | None = None, collate_fn: Callable = collate, pin_memory: bool = False
                      ) -> DataLoader:
    """Finite, ordered loader over this rank's contiguous slice of ``dataset`` (``collate_fn`` batches)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size = resolve_rank_world(rank, world_size)
    indices = list(shard_range(len(dataset), rank, world_size))
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(indices, batch_size, drop_last=False),
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=worker_init if num_workers > 0 else None,
        multiprocessing_context=worker_context(num_workers),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,  # evaluated again and again during training: start workers once
    )
