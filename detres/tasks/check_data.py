"""Check a config's data before a long run: ``tools/check_data.py CONFIG``.

Every image of the configured splits is decoded and every annotation parsed with the same code and checks
as training (detection: the data set's ``load(i)`` and then its transforms, as the training loader calls
them; classification: the ImageNet folders' images, or the CIFAR-10 files), in parallel threads, and every
problem is collected instead of stopping at the first: a truncated JPEG hours into a run, a box with NaN
coordinates, a label out of range, an empty class folder.

:func:`check_data` returns the problems as ``(split, what)`` pairs, ``what`` naming the file (or the
item) and what is wrong.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["check_data", "check_detection_item", "format_problems", "require_clean_data", "SPLITS"]

logger = logging.getLogger("detres")

#: ``split`` choices of :func:`check_data`.
SPLITS = ("train", "test", "all")


def _describe(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if isinstance(exc, ValueError) else f"{type(exc).__name__}: {msg}"


def check_detection_item(dataset: Any, index: int, num_classes: int | None = None) -> list[str]:
    """Problems of item ``index``: what ``dataset.load(index)`` raises, an image that is not HWC uint8 RGB,
    boxes that are not finite xyxy ``[N, 4]`` with x2 >= x1 and y2 >= y1, labels outside 1..K, and what the
    training transforms raise. An empty list when the item is fine."""
    ids = getattr(dataset, "ids", None)
    name = f"item {index}" + (f" (image id {ids[index]!r})" if ids is not None and index < len(ids) else "")
    try:
        image, target = dataset.load(index)
    except Exception as e:  # noqa: BLE001 - every failure is reported, the check goes on
        return [_describe(e)]
    problems = []
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        problems.append(f"{name}: the image is not HWC uint8 RGB (got {type(image).__name__} "
                        f"{getattr(image, 'shape', '')} {getattr(image, 'dtype', '')})")
        return problems
    boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4)), dtype=torch.float64)
    labels = torch.as_tensor(target.get("labels", torch.zeros(0, dtype=torch.int64)))
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        problems.append(f"{name}: boxes of shape {list(boxes.shape)}, expected [N, 4]")
    else:
        if not torch.isfinite(boxes).all():
            problems.append(f"{name}: a box has a NaN or infinite coordinate")
        elif len(boxes) and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
            problems.append(f"{name}: a box has x2 < x1 or y2 < y1")
        if labels.shape != (boxes.shape[0],):
            problems.append(f"{name}: {boxes.shape[0]} boxes but labels of shape {list(labels.shape)}")
    k = len(getattr(dataset, "class_names", ()) or ()) if num_classes is None else num_classes - 1
    if labels.numel() and k and (int(labels.min()) < 1 or int(labels.max()) > k):
        problems.append(f"{name}: label {int(labels.max()) if int(labels.max()) > k else int(labels.min())} "
                        f"outside 1..{k}")
    transforms = getattr(dataset, "transforms", None)
    if not problems and transforms is not None:
        try:
            transforms(image, target, seed=0)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: the training transforms fail: {_describe(e)}")
    return problems


def _check_items(count: int, check: Callable[[int], list[str]], workers: int, label: str) -> list[str]:
    problems: list[str] = []
    step = max(1, count // 10)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, found in enumerate(pool.map(check, range(count))):
            problems.extend(found)
            if count >= 100 and (i + 1) % step == 0:
                logger.info("%s: %d/%d items checked, %d problem(s) so far", label, i + 1, count, len(problems))
    return problems


def _dropped_boxes(dataset: Any) -> list[str]:
    """What a data set (or each part of a concatenation) dropped while reading its annotations (VOC: degenerate
    boxes, ``VOCDetection.dropped_boxes``): training goes on without them, the check reports them."""
    parts = getattr(dataset, "datasets", None)
    if parts:
        return [p for part in parts for p in _dropped_boxes(part)]
    return list(getattr(dataset, "dropped_boxes", ()))


def _detection(cfg: Any, splits: list[str], workers: int) -> list[tuple[str, str]]:
    from detres.tasks import detection

    found: list[tuple[str, str]] = []
    for split in splits:
        label = f"{split} ({', '.join(cfg.data.train) if split == 'train' else cfg.data.test})"
        try:
            dataset = (detection.build_train_dataset if split == "train" else detection.build_test_dataset)(cfg)
            detection.check_num_classes(cfg, dataset)
        except Exception as e:  # noqa: BLE001 - the annotation files of this split: one problem, go on
            found.append((label, _describe(e)))
            continue
        k = cfg.model.num_classes
        problems = _dropped_boxes(dataset)
        problems += _check_items(len(dataset), lambda i: check_detection_item(dataset, i, k), workers, label)
        logger.info("%s: %d images checked, %d problem(s)", label, len(dataset), len(problems))
        found.extend((label, p) for p in problems)
    return found


def _classification(cfg: Any, splits: list[str], workers: int) -> list[tuple[str, str]]:
    from detres.data.imagenet import ImageNetFolder, read_image
    from detres.tasks import classification

    found: list[tuple[str, str]] = []
    for split in splits:
        try:
            train_set, test_set = classification.build_datasets(cfg, train=split == "train", test=split == "test")
        except Exception as e:  # noqa: BLE001
            found.append((split, _describe(e)))
            continue
        dataset = train_set if split == "train" else test_set
        if not isinstance(dataset, ImageNetFolder):  # CIFAR-10 / digits: arrays, checked when read
            logger.info("%s: %d images read and checked", split, len(dataset))
            continue

        def check(i: int, samples=dataset.samples) -> list[str]:
            try:
                image = read_image(samples[i][0])
            except Exception as e:  # noqa: BLE001
                return [_describe(e)]
            return [] if min(image.shape[1:]) > 0 else [f"{samples[i][0]}: empty image"]
        problems = _check_items(len(dataset), check, workers, split)
        logger.info("%s: %d images checked, %d problem(s)", split, len(dataset), len(problems))
        found.extend((split, p) for p in problems)
    return found


def check_data(cfg: Any, *, split: str = "all", workers: int | None = None) -> list[tuple[str, str]]:
    """Decode and check every item of the config's training (``split="train"``), test (``"test"``) or both
    (``"all"``) data in ``workers`` threads (default: the CPU count, at most 16). Returns ``(split, problem)``
    pairs (empty when the data is fine); a split whose annotation files cannot be read is one problem."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose from {list(SPLITS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    workers = workers or min(16, os.cpu_count() or 1)
    splits = ["train", "test"] if split == "all" else [split]
    task = getattr(cfg, "task", "detection")
    if task == "detection":
        return _detection(cfg, splits, workers)
    if task == "classification":
        return _classification(cfg, splits, workers)
    raise ValueError(f"config key 'task': unknown task {task!r}")


def format_problems(problems: list[tuple[str, str]], *, limit: int | None = None) -> str:
    """One line per problem, ``<split>: <problem>``; with ``limit``, the rest counted on a last line."""
    lines = [f"{s}: {p}" for s, p in problems[:limit]]
    if limit is not None and len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def require_clean_data(cfg: Any, *, source: str, workers: int | None = None, limit: int = 200) -> None:
    """:func:`check_data` on every split; the problems are printed (one per line, on stderr) and a ValueError
    counts them. The training tools' ``--check-data``."""
    import sys

    problems = check_data(cfg, workers=workers)
    if problems:
        print(format_problems(problems, limit=limit), file=sys.stderr)
        raise ValueError(f"{source}: {len(problems)} problem(s) in the data (listed above); fix them before training")
