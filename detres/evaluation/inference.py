"""Run a detector over a test loader and feed an evaluator; gather helpers for distributed runs."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterable

import torch

from detres.data.transforms import to_original

__all__ = ["inference_on_dataset", "all_gather_objects", "broadcast_object", "is_main_process"]

logger = logging.getLogger(__name__)


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def is_main_process() -> bool:
    return not _dist_ready() or torch.distributed.get_rank() == 0


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not _dist_ready():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not _dist_ready():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=dtypes[amp])


@torch.no_grad()
def inference_on_dataset(model: torch.nn.Module, data_loader: Iterable, evaluator, *, device: str | torch.device = "cpu",
                         amp: str | None = None, log_period: int = 50) -> dict:
    """Evaluate ``model`` on ``data_loader`` (batches ``(images, targets)`` from
    :func:`detres.data.loader.build_test_loader`).

    The model runs in eval mode (its training flag is restored afterwards); its outputs
    ``{"boxes" [N,4] xyxy in input-image pixels, "labels", "scores"}`` are mapped back to the
    original image with :func:`detres.data.transforms.to_original`, moved to the CPU in float32 and
    passed to ``evaluator.process(targets, outputs)``. Returns ``evaluator.evaluate()`` (the same
    dict on every rank in distributed runs).
    """
    device = torch.device(device)
    evaluator.reset()
    was_training = model.training
    model.eval()
    n_images, start = 0, time.perf_counter()
    try:
        total = len(data_loader) if hasattr(data_loader, "__len__") else None
        for it, (images, targets) in enumerate(data_loader):
            images = [img.to(device, non_blocking=True) for img in images]
            with _autocast(device, amp):
                outputs = model(images)
            cpu_outputs = []
            for out, target in zip(outputs, targets):
                boxes = to_original(out["boxes"].detach().float().cpu(), target)
                cpu_outputs.append({"boxes": boxes, "labels": out["labels"].detach().cpu(),
                                    "scores": out["scores"].detach().float().cpu()})
            evaluator.process(targets, cpu_outputs)
            n_images += len(images)
            if log_period and (it + 1) % log_period == 0:
                rate = n_images / max(time.perf_counter() - start, 1e-9)
                logger.info("inference: batch %d/%s, %.2f images/s", it + 1, total if total is not None else "?", rate)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info("inference: %d images in %.1f s (%.2f images/s)", n_images, elapsed, n_images / max(elapsed, 1e-9))
    return evaluator.evaluate()
