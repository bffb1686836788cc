"""Run a detector over a test loader and feed an evaluator; map detections back to original pixels.

The data pipeline resizes every image once (:mod:`detres.data.transforms`); the detector answers in the
resized image's pixels. :func:`predict_original` is the one place where detections are mapped back to
the ORIGINAL image (0-based xyxy pixels), used by evaluation, ``tools/predict.py`` and the pictures.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import torch

from detres.data.transforms import to_original
from detres.modeling.rcnn import scale_targets
from detres.utils.amp import autocast

__all__ = ["predict_original", "inference_on_dataset"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_original(model: torch.nn.Module, images: Sequence[torch.Tensor], targets: Sequence[dict], *,
                     device: str | torch.device = "cpu", amp: str | None = None) -> list[dict]:
    """Detections of ``model`` (eval mode) in the ORIGINAL images' pixels.

    ``images``: transformed float RGB [3, h, w] in [0, 1]; ``targets``: their transform targets (with
    ``size``, ``orig_size`` and ``flipped``, see :func:`~detres.data.transforms.to_original`). Returns one
    ``{"boxes": float32 [D, 4] xyxy 0-based original pixels, "labels": int64 [D] 1..K, "scores": float32 [D]}``
    per image, on the CPU.
    """
    device = torch.device(device)
    inputs = [img.to(device, non_blocking=True) for img in images]
    scales = scale_targets(model, list(targets))  # the RPN's minimum size is given at the original scale
    with autocast(amp, device):
        outputs = model(inputs, scales) if scales is not None else model(inputs)
    return [{"boxes": to_original(out["boxes"].detach().float().cpu(), target),
             "labels": out["labels"].detach().cpu(),
             "scores": out["scores"].detach().float().cpu()} for out, target in zip(outputs, targets)]


@torch.no_grad()
def inference_on_dataset(model: torch.nn.Module, data_loader: Iterable, evaluator, *, device: str | torch.device = "cpu",
                         amp: str | None = None, log_period: int = 50) -> dict:
    """Evaluate ``model`` on ``data_loader`` (batches ``(images, targets)`` from
    :func:`detres.data.loader.build_test_loader`).

    The model runs in eval mode (its training flag is restored afterwards); :func:`predict_original`
    maps its outputs to the original images for ``evaluator.process(targets, outputs)``. Returns
    ``evaluator.evaluate()`` (the same dict on every rank in distributed runs).
    """
    evaluator.reset()
    was_training = model.training
    model.eval()
    n_images, start = 0, time.perf_counter()
    try:
        total = len(data_loader) if hasattr(data_loader, "__len__") else None
        for it, (images, targets) in enumerate(data_loader):
            evaluator.process(targets, predict_original(model, images, targets, device=device, amp=amp))
            n_images += len(images)
            if log_period and (it + 1) % log_period == 0:
                rate = n_images / max(time.perf_counter() - start, 1e-9)
                logger.info("inference: batch %d/%s, %.2f images/s", it + 1, total if total is not None else "?", rate)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info("inference: %d images in %.1f s (%.2f images/s)", n_images, elapsed, n_images / max(elapsed, 1e-9))
    return evaluator.evaluate()
