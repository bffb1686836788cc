"""Run a detector over a test loader and feed an evaluator; map detections back to original pixels.

The data pipeline resizes every image once (:mod:`detres.data.transforms`). :func:`predict_original` hands
the detector each image's ORIGINAL size (the targets' ``orig_size``); the detector itself takes the RPN's
minimum size at that scale and maps its boxes back to the original image (0-based xyxy pixels), as the
exported files do (:mod:`detres.modeling.detector`). Used by evaluation, ``tools/predict.py``,
``detres.Predictor`` and the pictures.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import torch

from detres.utils.amp import autocast

__all__ = ["predict_original", "inference_on_dataset"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_original(model: torch.nn.Module, images: Sequence[torch.Tensor], targets: Sequence[dict], *,
                     device: str | torch.device = "cpu", amp: str | None = None) -> list[dict]:
    """Detections of ``model`` (eval mode) in the ORIGINAL images' pixels.

    ``images``: transformed float RGB [3, h, w] in [0, 1]; ``targets``: their transform targets (``orig_size``
    = the image's ``[H0, W0]`` before the resize, passed to the model as ``original_sizes``; without it the
    input's own size; ``flipped``: a flipped input's boxes are flipped back). Returns one
    ``{"boxes": float32 [D, 4] xyxy 0-based original pixels, "labels": int64 [D] 1..K, "scores": float32 [D]}``
    per image, on the CPU.
    """
    device = torch.device(device)
    inputs = [img.to(device, non_blocking=True) for img in images]
    # each image's size before the resize: the model maps its boxes there and scales the RPN's minimum size
    originals = [t["orig_size"] if "orig_size" in t else img.shape[-2:] for img, t in zip(inputs, targets)]
    with autocast(amp, device):
        outputs = model(inputs, original_sizes=originals)
    return [{"boxes": _unflip(out["boxes"].detach().float().cpu(), target, original),
             "labels": out["labels"].detach().cpu(),
             "scores": out["scores"].detach().float().cpu()} for out, target, original in zip(outputs, targets, originals)]


def _unflip(boxes: torch.Tensor, target: dict, original) -> torch.Tensor:
    """Boxes of a horizontally flipped input (``target["flipped"]``) in the unflipped original image."""
    if not target.get("flipped", False):
        return boxes
    out = boxes.clone()
    out[:, [0, 2]] = float(original[1]) - boxes[:, [2, 0]]
    return out


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
