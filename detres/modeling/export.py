"""Exporting a trained detector: TorchScript and ONNX, one image in, three tensors out.

The exported model takes ONE image as a float32 tensor ``[3, H, W]``, RGB in [0, 1] (any H and W), and
returns ``(boxes [N, 4] float32 xyxy in the input's pixels, labels [N] int64 in 1..K (0 is the background and
never returned), scores [N] float32)``. The weights' preprocessing (channel order, range, mean/std) is inside.

Both formats come from tracing the eager model (``torch.jit.trace``; ``torch.onnx.export`` with the
TorchScript-based exporter, opset 17, dynamic height and width): torchvision's detection code has tracing
paths that keep the data-dependent parts (top-k, NMS, box clipping) dynamic. Scripting is not used: the
detector's Python (torchvision's and the paper's RPN/RoI options) is not TorchScript-compilable as a whole.

What exports: ResNet and VGG-16 C4 detectors, RoIAlign and RoIPool (ONNX ``RoiAlign`` and ``MaxRoiPool``),
dynamic image sizes, fp32, the eager model (not the fast path's wrappers). What cannot: a model that resizes
inside (``min_size`` set: the data pipeline resizes in detres, so callers give an already resized image),
and RoIAlign with ``aligned=True`` in ONNX opsets below 16. Each is refused with a ValueError naming it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["ExportableDetector", "export_detector", "FORMATS"]

FORMATS = ("torchscript", "onnx")


class ExportableDetector(nn.Module):
    """``forward(image [3, H, W]) -> (boxes [N, 4], labels [N], scores [N])`` around a detres detector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def _check_exportable(model: nn.Module) -> None:
    transform = getattr(model, "transform", None)
    if getattr(transform, "resize_images", False):
        raise ValueError("min_size: the model resizes its input; build it with min_size=None (detres's default) and "
                         "give the exported model images already resized to the config's sizes")
    pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
    if pool is None or not hasattr(pool, "kind"):
        raise ValueError("the model is not a detres C4 detector (no C4RoIPooler); export the eager model from "
                         "build_detector / load_model_from_checkpoint, not the fast path's copy")


def export_detector(model: nn.Module, path: str | os.PathLike, *, fmt: str = "torchscript",
                    example_size: tuple[int, int] = (480, 640), opset: int = 17) -> Path:
    """Export ``model`` (a detres detector, eval mode) to ``path`` as ``fmt`` ("torchscript" or "onnx").

    ``example_size`` is the (H, W) of the image used to trace; other sizes work (tested). Returns ``path``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {list(FORMATS)}")
    _check_exportable(model)
    if fmt == "onnx" and opset < 16 and getattr(model.roi_heads.box_roi_pool, "aligned", False):
        raise ValueError(f"opset {opset}: RoIAlign with aligned=True needs ONNX opset 16 or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportableDetector(model).eval()
    example = torch.rand(3, *example_size)
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
                traced.save(str(tmp))
            else:
                torch.onnx.export(wrapper, (example,), str(tmp), opset_version=opset, dynamo=False,
                                  input_names=["image"], output_names=["boxes", "labels", "scores"],
                                  dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                                "labels": {0: "detections"}, "scores": {0: "detections"}})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
