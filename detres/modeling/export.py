"""Exporting a trained detector: TorchScript and ONNX, one image in, three tensors out.

The exported model takes ONE image as a float32 tensor ``[3, H, W]``, RGB in [0, 1] (any H and W), already
resized by the client (:data:`RESIZE_RULE`), and ``orig_size``, an int64 tensor ``[2]`` = ``(H0, W0)``, the
photo's size before that resize; it returns ``(boxes [N, 4] float32 xyxy in the PHOTO's pixels, labels [N]
int64 in 1..K (0 is the background and never returned), scores [N] float32)``. The original size is the
detector's own input (:class:`detres.modeling.detector.C4FasterRCNN`), so the file drops the RPN's small
proposals at the photo's scale (py-faster-rcnn's ``min_size * im_scale``) and maps boxes back exactly as
evaluation and ``detres.Predictor`` do. TorchScript's ``orig_size`` is optional (default: the image's own
size, i.e. no resize); ONNX takes both inputs. The weights' preprocessing (channel order, range, mean/std)
is inside.

Both formats come from tracing the eager model (``torch.jit.trace``; ``torch.onnx.export`` with the
TorchScript-based exporter, opset 17, dynamic height and width): torchvision's detection code has tracing
paths that keep the data-dependent parts (top-k, NMS, box clipping) dynamic. The detector is not scripted
(torchvision's and the paper's RPN/RoI options are not TorchScript-compilable as a whole); only the thin outer
TorchScript module that warns about 0-255 inputs is.

What exports: ResNet and VGG-16 C4 detectors, RoIAlign and RoIPool (ONNX ``RoiAlign`` and ``MaxRoiPool``),
dynamic image sizes, fp32, the eager model (not the fast path's wrappers). What cannot: a model that resizes
inside (``min_size`` set: the data pipeline resizes in detres, so callers give an already resized image),
and RoIAlign with ``aligned=True`` in ONNX opsets below 16. Each is refused with a ValueError naming it.

The input contract travels with the file (:func:`export_metadata`): ONNX ``metadata_props`` and, in
TorchScript, the extra file ``detres.json`` (``torch.jit.load(path, _extra_files={"detres.json": ""})``):
class names, label -> category id, the resize a client must apply, the input range, and the normalisation
done inside. An image with values above 1 is taken as 0-255 and divided by 255 inside the graph (TorchScript
also warns). The TorchScript module's parameters do not require grad, so its outputs are plain tensors
(``.numpy()`` works outside ``torch.no_grad()``). Export is quiet: the tracer's and torchvision's known,
harmless warnings are filtered; any other warning is shown.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from detres.utils.io import atomic_write

__all__ = ["ExportableDetector", "export_detector", "export_metadata", "read_metadata", "FORMATS", "RESIZE_RULE"]

FORMATS = ("torchscript", "onnx")

#: How a client turns a photo into the exported model's input (the same as detres's test transform).
RESIZE_RULE = ("scale = min(min_size / min(H0, W0), max_size / max(H0, W0)); H = max(1, round(H0 * scale)), "
               "W = max(1, round(W0 * scale)) (Python's round); resize the uint8 HxWx3 RGB image with OpenCV "
               "cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR), then float32 / 255 and HWC -> CHW. "
               "Give orig_size = [H0, W0] (int64) beside it: boxes come back in the photo's pixels. "
               "Another resampler (e.g. PIL's bilinear) moves boxes by pixels.")

#: Warnings of tracing/exporting torchvision's detector that a user can do nothing about (message regexes).
_KNOWN_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    (UserWarning, r"To copy construct from a tensor"),
    (UserWarning, r"Exporting aten::index operator of advanced indexing"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
)


class ExportableDetector(nn.Module):
    """``forward(image [3, H, W], orig_size [2]) -> (boxes [N, 4], labels [N], scores [N])`` around a detres
    detector: ``orig_size`` (H0, W0) is handed to the detector as its original size, boxes come back in it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, image: torch.Tensor, orig_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # an image in 0-255 (a common client mistake) would give no detection at all: take it as such
        image = torch.where(image.amax() > 1.0, image / 255.0, image)
        out = self.model([image], original_sizes=[orig_size])[0]
        return out["boxes"], out["labels"], out["scores"]


class _RangeWarning(nn.Module):
    """TorchScript's outer module: warns when the image is not in [0, 1] (the traced graph rescales it);
    ``orig_size`` defaults to the image's own size (no resize)."""

    def __init__(self, traced: nn.Module):
        super().__init__()
        self.detector = traced

    def forward(self, image: torch.Tensor, orig_size: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if bool(image.amax() > 1.0):
            warnings.warn("detres export: the image has values above 1; taken as 0-255 and divided by 255 "
                          "(the model expects float32 RGB in [0, 1])")
        if orig_size is None:
            orig_size = torch.tensor([image.shape[1], image.shape[2]], dtype=torch.int64)
        return self.detector(image, orig_size)


def export_metadata(model: nn.Module, *, class_names: Sequence[str] | None = None,
                    label_to_cat_id: Mapping[int, int] | None = None, min_size: int | None = None,
                    max_size: int | None = None) -> dict[str, str]:
    """The input/output contract written into an exported file: string keys -> string values (ONNX
    ``metadata_props``). JSON values: ``class_names`` (label i + 1 is ``class_names[i]``), ``category_ids``
    (label -> the data's category id; the label itself when the data had none), ``normalization`` (done
    inside the model)."""
    meta = dict(getattr(model, "weights_meta", None) or {})
    names = list(class_names) if class_names is not None else None
    ids = ({str(int(k)): int(v) for k, v in label_to_cat_id.items()} if label_to_cat_id
           else ({str(i + 1): i + 1 for i in range(len(names))} if names is not None else None))
    out = {
        "detres.input": "image: float32 [3, H, W], RGB, values in [0, 1] (values above 1 are taken as 0-255 and "
                        "divided by 255 inside), resized by detres.resize; orig_size: int64 [2], the photo's "
                        "[H0, W0] before the resize",
        "detres.outputs": "boxes: float32 [N, 4] xyxy in the photo's pixels (orig_size); labels: int64 [N] in "
                          "1..K (0 = background, never returned); scores: float32 [N], highest first",
        "detres.resize": RESIZE_RULE,
        "detres.normalization": json.dumps({k: meta[k] for k in ("channel_order", "input_range", "mean", "std")
                                            if k in meta}) + " (applied inside the model)",
    }
    if names is not None:
        out["detres.class_names"] = json.dumps(names)
    if ids is not None:
        out["detres.category_ids"] = json.dumps(ids)
    if min_size is not None:
        out["detres.min_size"] = str(int(min_size))
    if max_size is not None:
        out["detres.max_size"] = str(int(max_size))
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The contract :func:`export_detector` wrote into ``path`` (ONNX or TorchScript)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    extra = {"detres.json": ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_KNOWN_WARNINGS[0][1], category=FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["detres.json"] or "{}")


def _quiet() -> Any:
    """A warnings context that hides :data:`_KNOWN_WARNINGS` and the tracer's own warnings only."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    for category, message in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    return ctx


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
                    example_size: tuple[int, int] = (480, 640), opset: int = 17,
                    metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> Path:
    """Export ``model`` (a detres detector, eval mode; not changed) to ``path`` as ``fmt`` ("torchscript" or
    "onnx"), with ``metadata`` (default :func:`export_metadata` of the model) inside the file.

    ``example_size`` is the (H, W) of the image used to trace; other sizes work (tested). An existing ``path``
    is refused unless ``overwrite`` (a checkpoint always: it is the weights, not an export). Returns ``path``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {list(FORMATS)}")
    _check_exportable(model)
    if fmt == "onnx" and opset < 16 and getattr(model.roi_heads.box_roi_pool, "aligned", False):
        raise ValueError(f"opset {opset}: RoIAlign with aligned=True needs ONNX opset 16 or newer")
    meta = dict(metadata) if metadata is not None else export_metadata(model)
    path = Path(path)
    if path.exists():
        if path.is_dir():
            raise ValueError(f"--out {path}: is a folder; give the file to write")
        if path.suffix in (".pth", ".pkl") or Path(str(path) + ".sha256").exists():
            raise ValueError(f"--out {path}: looks like a checkpoint (.pth/.pkl or a .sha256 beside it); "
                             "export to another file (.pt / .onnx)")
        if not overwrite:
            raise ValueError(f"--out {path}: exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    frozen = copy.deepcopy(model).eval().requires_grad_(False)  # outputs without grad; the caller's model untouched
    wrapper = ExportableDetector(frozen).eval()
    example = (torch.rand(3, *example_size), torch.tensor([2 * example_size[0], 2 * example_size[1]]))
    ctx = _quiet()
    try:  # written beside path, fsynced and renamed over it (utils/io's atomic write)
        with torch.no_grad():
            if fmt == "torchscript":
                traced = torch.jit.trace(wrapper, example, check_trace=False)
                scripted = torch.jit.script(_RangeWarning(traced))
                atomic_write(path, lambda f: torch.jit.save(scripted, f,
                                                            _extra_files={"detres.json": json.dumps(meta)}),
                             binary=True)
            else:
                buffer = io.BytesIO()
                torch.onnx.export(wrapper, example, buffer, opset_version=opset, dynamo=False,
                                  input_names=["image", "orig_size"], output_names=["boxes", "labels", "scores"],
                                  dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                                "labels": {0: "detections"}, "scores": {0: "detections"}})
                import onnx

                proto = onnx.load_from_string(buffer.getvalue())
                for key, value in meta.items():
                    entry = proto.metadata_props.add()
                    entry.key, entry.value = str(key), str(value)
                atomic_write(path, lambda f: f.write(proto.SerializeToString()), binary=True)
    finally:
        ctx.__exit__(None, None, None)
    return path
