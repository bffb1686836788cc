"""The detector's specification: a frozen dataclass tree that :func:`detres.modeling.build_detector` builds.

``DetectorSpec(backbone=BackboneSpec(...), pooler=PoolerSpec(...), rpn=RPNSpec(...), roi=RoISpec(...),
input=InputSpec(...))``. Each part carries the field names of its config section (``model.backbone``,
``model.pooler``, ``model.rpn``, ``model.roi``; ``input`` holds ``data.min_size``/``max_size``'s meaning for
the model), and its defaults are read from :mod:`detres.config`'s dataclasses, so every default is written
once. A spec checks itself when it is made (choices, ranges, and rules across parts such as "vgg16 takes a
7x7 pool") and raises :class:`SpecError` (a ValueError) naming the field, e.g. ``rpn.nms_thresh``.

Conventions: sizes in pixels of the image the model receives, except ``rpn.min_size`` (pixels of the
ORIGINAL image, see :mod:`detres.modeling.rcnn`); IoUs and fractions in [0, 1]; class 0 = background.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Union

from detres.backbones import NORMS, SHORTCUTS, STYLES, default_pool_size, fixed_pool_size, list_backbones
from detres.config import BackboneConfig, DataConfig, PoolerConfig, RoIConfig, RPNConfig

__all__ = ["SpecError", "BackboneSpec", "PoolerSpec", "RPNSpec", "RoISpec", "InputSpec", "DetectorSpec", "POOLERS",
           "ANCHOR_STYLES"]

#: RoI feature extraction: torchvision's RoIAlign or the Fast R-CNN RoI max pooling.
POOLERS = ("roi_align", "roi_pool")
#: RPN anchors and proposal order: py-faster-rcnn's (see :mod:`detres.modeling.rcnn`) or torchvision's.
ANCHOR_STYLES = ("pfr", "torchvision")

# the defaults, read from the config schema (written once, there)
_B, _P, _R, _O, _D = BackboneConfig(), PoolerConfig(), RPNConfig(), RoIConfig(), DataConfig()


class SpecError(ValueError):
    """A spec field with a wrong value: ``field`` is its dotted name in the tree (``"roi.nms_thresh"``),
    ``reason`` what is wrong with it (the message is ``"<field>: <reason>"``)."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def _check_range(part: str, obj: Any, name: str, lo: float | None, hi: float | None, *,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    v = getattr(obj, name)
    if v is None:
        return
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        interval = f"{'(' if lo_open else '['}{lo_s}, {hi_s}{')' if hi_open else ']'}"
        raise SpecError(f"{part}.{name}", f"must be in {interval}, got {v!r}")


def _check_choice(part: str, name: str, value: Any, choices) -> None:
    if value not in tuple(choices):
        raise SpecError(f"{part}.{name}", f"must be one of {list(choices)}, got {value!r}")


def _check_sizes(part: str, obj: Any, name: str) -> None:
    """A non-empty sequence of positive numbers, kept as a tuple (the spec is frozen)."""
    values = getattr(obj, name)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise SpecError(f"{part}.{name}", f"must be a non-empty list of positive numbers, got {values!r}")
    values = tuple(values)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise SpecError(f"{part}.{name}", f"must be a non-empty list of positive numbers, got {list(values)!r}")
    object.__setattr__(obj, name, values)


@dataclass(frozen=True)
class BackboneSpec:
    """The C4 trunk and head (``model.backbone``): see :func:`detres.backbones.build_c4`."""
    name: str = _B.name
    weights: Optional[Union[str, os.PathLike]] = _B.weights
    style: Optional[str] = _B.style
    norm: str = _B.norm
    freeze_at: int = _B.freeze_at
    shortcut: str = _B.shortcut
    width: int = _B.width
    caffe_stem_pool: bool = _B.caffe_stem_pool

    def __post_init__(self) -> None:
        _check_choice("backbone", "name", self.name, list_backbones())
        _check_choice("backbone", "caffe_stem_pool", self.caffe_stem_pool, (False, True))
        _check_choice("backbone", "style", self.style, (None, *STYLES))
        _check_choice("backbone", "norm", self.norm, NORMS)
        _check_choice("backbone", "shortcut", self.shortcut, SHORTCUTS)
        _check_range("backbone", self, "freeze_at", 0, 5)
        _check_range("backbone", self, "width", 1, None)


@dataclass(frozen=True)
class PoolerSpec:
    """RoI features from the stride-16 map (``model.pooler``); ``resolution`` None = the backbone's own
    (14 for ResNets, 7 for VGG-16, see :meth:`DetectorSpec.pool_size`)."""
    type: str = _P.type
    resolution: Optional[int] = _P.resolution
    sampling_ratio: int = _P.sampling_ratio
    aligned: bool = _P.aligned

    def __post_init__(self) -> None:
        _check_choice("pooler", "type", self.type, POOLERS)
        _check_range("pooler", self, "resolution", 1, None)
        _check_range("pooler", self, "sampling_ratio", 0, None)


@dataclass(frozen=True)
class RPNSpec:
    """The region proposal network (``model.rpn``): anchors, proposal selection, training samples."""
    anchor_sizes: tuple[float, ...] = tuple(_R.anchor_sizes)
    aspect_ratios: tuple[float, ...] = tuple(_R.aspect_ratios)
    pre_nms_top_n_train: int = _R.pre_nms_top_n_train
    post_nms_top_n_train: int = _R.post_nms_top_n_train
    pre_nms_top_n_test: int = _R.pre_nms_top_n_test
    post_nms_top_n_test: int = _R.post_nms_top_n_test
    nms_thresh: float = _R.nms_thresh
    min_size: float = _R.min_size
    fg_iou_thresh: float = _R.fg_iou_thresh
    bg_iou_thresh: float = _R.bg_iou_thresh
    allowed_border: float = _R.allowed_border
    batch_size_per_image: int = _R.batch_size_per_image
    positive_fraction: float = _R.positive_fraction
    anchor_style: str = _R.anchor_style
    smooth_l1_beta: float = _R.smooth_l1_beta

    def __post_init__(self) -> None:
        _check_choice("rpn", "anchor_style", self.anchor_style, ANCHOR_STYLES)
        _check_range("rpn", self, "smooth_l1_beta", 0, None)
        _check_sizes("rpn", self, "anchor_sizes")
        _check_sizes("rpn", self, "aspect_ratios")
        for name in ("pre_nms_top_n_train", "post_nms_top_n_train", "pre_nms_top_n_test", "post_nms_top_n_test",
                     "batch_size_per_image"):
            _check_range("rpn", self, name, 1, None)
        _check_range("rpn", self, "nms_thresh", 0, 1, lo_open=True)
        _check_range("rpn", self, "min_size", 0, None)
        _check_range("rpn", self, "fg_iou_thresh", 0, 1)
        _check_range("rpn", self, "bg_iou_thresh", 0, self.fg_iou_thresh)
        _check_range("rpn", self, "positive_fraction", 0, 1)


@dataclass(frozen=True)
class RoISpec:
    """The RoI heads (``model.roi``): training samples, test-time score threshold, NMS and count."""
    batch_size_per_image: int = _O.batch_size_per_image
    positive_fraction: float = _O.positive_fraction
    fg_iou_thresh: float = _O.fg_iou_thresh
    bg_iou_thresh_hi: float = _O.bg_iou_thresh_hi
    bg_iou_thresh_lo: float = _O.bg_iou_thresh_lo
    score_thresh: float = _O.score_thresh
    nms_thresh: float = _O.nms_thresh
    detections_per_img: int = _O.detections_per_img
    smooth_l1_beta: float = _O.smooth_l1_beta

    def __post_init__(self) -> None:
        _check_range("roi", self, "smooth_l1_beta", 0, None)
        _check_range("roi", self, "batch_size_per_image", 1, None)
        _check_range("roi", self, "positive_fraction", 0, 1)
        _check_range("roi", self, "fg_iou_thresh", 0, 1)
        _check_range("roi", self, "bg_iou_thresh_hi", 0, self.fg_iou_thresh)
        _check_range("roi", self, "bg_iou_thresh_lo", 0, self.bg_iou_thresh_hi)
        _check_range("roi", self, "score_thresh", 0, 1, hi_open=True)
        _check_range("roi", self, "nms_thresh", 0, 1, lo_open=True)
        _check_range("roi", self, "detections_per_img", 1, None)


@dataclass(frozen=True)
class InputSpec:
    """What the model does to its input images before the trunk. ``min_size`` None: images arrive already
    resized (detres's data pipeline does it, the default); an int (or a tuple, drawn at random in training)
    makes the model resize like torchvision's detectors, to a shorter side ``min_size`` and a longer side of
    at most ``max_size`` pixels."""
    min_size: Optional[Union[int, tuple[int, ...]]] = None
    max_size: int = _D.max_size

    def __post_init__(self) -> None:
        if isinstance(self.min_size, int):
            _check_range("input", self, "min_size", 1, None)
        elif self.min_size is not None:
            _check_sizes("input", self, "min_size")
        _check_range("input", self, "max_size", 1, None)


@dataclass(frozen=True)
class DetectorSpec:
    """The whole C4 Faster R-CNN; the defaults are the paper's settings (see :mod:`detres.config`)."""
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    pooler: PoolerSpec = field(default_factory=PoolerSpec)
    rpn: RPNSpec = field(default_factory=RPNSpec)
    roi: RoISpec = field(default_factory=RoISpec)
    input: InputSpec = field(default_factory=InputSpec)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), _PARTS[f.name]):
                got = type(getattr(self, f.name)).__name__
                raise SpecError(f.name, f"must be a {_PARTS[f.name].__name__}, got {got}")
        fixed = fixed_pool_size(self.backbone.name)
        if fixed is not None and self.pool_size != fixed:
            raise SpecError("pooler.resolution", f"{self.backbone.name}'s head takes {fixed}x{fixed} RoI features (its "
                            f"first fc layer); {self.pool_size} cannot be used")

    @property
    def pool_size(self) -> int:
        """The RoI feature side: ``pooler.resolution``, or the backbone's own when that is None."""
        return self.pooler.resolution or default_pool_size(self.backbone.name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{"backbone": {...}, "pooler": {...}, ...}`` of plain values (tuples as lists), for files."""
        return {f.name: {k.name: _plain(getattr(getattr(self, f.name), k.name)) for k in fields(_PARTS[f.name])}
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> "DetectorSpec":
        """The inverse of :meth:`to_dict`; missing parts or fields take the defaults, unknown ones are refused."""
        unknown = set(data) - set(_PARTS)
        if unknown:
            raise SpecError(sorted(unknown)[0], f"not a part of a detector spec; parts: {list(_PARTS)}")
        parts = {}
        for name, values in data.items():
            known = {f.name for f in fields(_PARTS[name])}
            extra = set(values) - known
            if extra:
                raise SpecError(f"{name}.{sorted(extra)[0]}", f"not a field of {_PARTS[name].__name__}")
            parts[name] = _PARTS[name](**values)
        return cls(**parts)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else value


_PARTS = {"backbone": BackboneSpec, "pooler": PoolerSpec, "rpn": RPNSpec, "roi": RoISpec, "input": InputSpec}
