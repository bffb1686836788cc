"""The detector's specification: a frozen dataclass tree that :func:`detres.modeling.build_detector` builds.

``DetectorSpec(backbone=BackboneSpec(...), pooler=PoolerSpec(...), rpn=RPNSpec(...), roi=RoISpec(...),
input=InputSpec(...))``. Each part is MADE from its config section's dataclass (``model.backbone``,
``model.pooler``, ``model.rpn``, ``model.roi`` in :mod:`detres.config`): the same field names, types,
defaults and rules (ranges, choices, "bg_iou_thresh at most fg_iou_thresh"), each written once there, on
the field. The config is the lower layer (it cannot import this module), so the field lives there and the
spec follows it: an option added to a config section is a spec field, converted and checked as YAML's value
is (:func:`detres.config.field_problem`), with no edit here. What needs the backbone registry (the name,
norm, style, shortcut choices; an option the backbone's family does not take; "vgg16 takes a 7x7 pool") is
checked here on top. ``input`` holds ``data.min_size``/``max_size``'s meaning for the model. A refused value
raises :class:`SpecError` (a ValueError) naming the field, e.g. ``rpn.nms_thresh``.

Conventions: sizes in pixels of the image the model receives, except ``rpn.min_size`` (pixels of the
ORIGINAL image, see :mod:`detres.modeling.rcnn`); IoUs and fractions in [0, 1]; class 0 = background.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Union

from detres.backbones import (NORMS, SHORTCUTS, STYLES, backbone_options, default_pool_size, fixed_pool_size,
                              list_backbones)
from detres.config import (BackboneConfig, DataConfig, PoolerConfig, RoIConfig, RPNConfig, convert_value,
                           field_problem)

__all__ = ["SpecError", "BackboneSpec", "PoolerSpec", "RPNSpec", "RoISpec", "InputSpec", "DetectorSpec", "POOLERS",
           "ANCHOR_STYLES"]


def _choices(section: type, name: str) -> tuple:
    return next(f.metadata["rule"]["choices"] for f in fields(section) if f.name == name)


#: RoI feature extraction: torchvision's RoIAlign or the Fast R-CNN RoI max pooling (``model.pooler.type``).
POOLERS = _choices(PoolerConfig, "type")
#: RPN anchors and proposal order: py-faster-rcnn's (see :mod:`detres.modeling.rcnn`) or torchvision's.
ANCHOR_STYLES = _choices(RPNConfig, "anchor_style")

_D = DataConfig()


class SpecError(ValueError):
    """A spec field with a wrong value: ``field`` is its dotted name in the tree (``"roi.nms_thresh"``),
    ``reason`` what is wrong with it (the message is ``"<field>: <reason>"``)."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def _check_range(part: str, obj: Any, name: str, lo: float | None, hi: float | None) -> None:
    v = getattr(obj, name)
    if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
        raise SpecError(f"{part}.{name}", f"must be in [{'-inf' if lo is None else f'{lo:g}'}, "
                                          f"{'inf' if hi is None else f'{hi:g}'}], got {v!r}")


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


def _check_fields(part: str, spec: Any, hints: Mapping[str, Any]) -> None:
    """Each field converted and checked as YAML's value of the same config key would be (types, then the
    field's rule in :mod:`detres.config`); lists become tuples (the spec is frozen)."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
            continue  # a path where the config holds a string (weights files)
        try:
            value = convert_value(value, hints[f.name])
        except ValueError as e:
            raise SpecError(f"{part}.{f.name}", str(e)) from None
        object.__setattr__(spec, f.name, tuple(value) if isinstance(value, list) else value)
    for f in fields(spec):
        reason = field_problem(spec, f.name)
        if reason is not None:
            raise SpecError(f"{part}.{f.name}", reason)


def _part_spec(section: type, part: str, name: str, doc: str, check: Any = None) -> type:
    """A frozen spec class with the fields of the config section ``section`` (names, types, defaults, rules:
    written once, there): a field added to the section is a field of the spec, checked alike. ``check``:
    the spec's own checks that need the layers above the config (the backbone registry)."""
    hints = typing.get_type_hints(section)
    specs = []
    for f in fields(section):
        default = f.default if f.default_factory is dataclasses.MISSING else tuple(f.default_factory())
        kind = hints[f.name]  # a config list is a tuple here (the spec is frozen)
        kind = tuple[(*typing.get_args(kind), ...)] if typing.get_origin(kind) is list else kind
        specs.append((f.name, kind, field(default=default, metadata=f.metadata)))

    def __post_init__(self) -> None:
        _check_fields(part, self, hints)
        if check is not None:
            check(self)

    cls = dataclasses.make_dataclass(name, specs, frozen=True, namespace={"__post_init__": __post_init__, "__doc__": doc})
    cls.__module__ = __name__
    return cls


def _check_backbone(spec: Any) -> None:
    _check_choice("backbone", "name", spec.name, list_backbones())
    _check_choice("backbone", "style", spec.style, (None, *STYLES))
    _check_choice("backbone", "norm", spec.norm, NORMS)
    _check_choice("backbone", "shortcut", spec.shortcut, SHORTCUTS)
    try:
        backbone_options(spec.name, style=spec.style, shortcut=spec.shortcut, width=spec.width,
                         caffe_stem_pool=spec.caffe_stem_pool)
    except ValueError as e:
        option = getattr(e, "option", "name")
        raise SpecError(f"backbone.{option}", str(e)) from None


BackboneSpec = _part_spec(BackboneConfig, "backbone", "BackboneSpec", """The C4 trunk and head (``model.backbone``): see
    :func:`detres.backbones.build_c4`; an option its family does not take is refused by name.""", _check_backbone)
PoolerSpec = _part_spec(PoolerConfig, "pooler", "PoolerSpec", """RoI features from the stride-16 map (``model.pooler``);
    ``resolution`` None = the backbone's own (14 for ResNets, 7 for VGG-16, see :meth:`DetectorSpec.pool_size`).""")
RPNSpec = _part_spec(RPNConfig, "rpn", "RPNSpec", """The region proposal network (``model.rpn``): anchors, proposal
    selection, training samples.""")
RoISpec = _part_spec(RoIConfig, "roi", "RoISpec", """The RoI heads (``model.roi``): training samples, test-time score
    threshold, NMS and count.""")


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
