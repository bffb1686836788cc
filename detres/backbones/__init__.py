"""detres.backbones: the public API for the paper's backbones.

    from detres.backbones import build_backbone, build_c4, build_classifier, list_backbones

- `build_backbone(name, ...)`: a trunk returning an OrderedDict of named maps, with `feature_specs`
  (name -> FeatureSpec(channels, stride)) and `out_channels`; usable in any torchvision detector.
- `build_c4(name, ...)`: the paper's Faster R-CNN split (Appendix A) -> (trunk up to res4 / conv5_3,
  RoI head running conv5 + pooling / fc6-fc7), both filled from one checkpoint.
- `build_classifier(name, ...)`: the ImageNet form, with torchvision's state-dict keys.

Every built module carries `weights_meta`: the input preprocessing its weights expect.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Sequence

from torch import nn

from detres.config import BackboneConfig, ClsModelConfig

from .cifar import CIFAR_DEPTHS, CifarResNet, cifar_spec
from .layers import NORMS, norm_factory
from .resnet import ARCHS as _RESNET_ARCHS, SHORTCUTS, STYLES, ResNet, ResNetC4Head, ResNetClassifier, check_shortcut
from .spec import FeatureSpec
from .vgg import VGG16, VGG16C4, VGG16Classifier, VGG16FCHead
from .weights import (MSRA_META, TORCHVISION_META, default_meta, load_state, read_weights,
                      resolve_style, validate_meta)

__all__ = [
    "FeatureSpec", "list_backbones", "list_classifiers", "build_backbone", "build_c4", "build_classifier",
    "read_weights", "NORMS", "default_pool_size", "fixed_pool_size", "has_style", "backbone_info", "backbone_options",
    "ResNetOptions", "VGGOptions", "CifarOptions", "OptionError", "BackboneInfo", "SHORTCUTS", "STYLES", "CifarResNet",
    "TORCHVISION_META", "MSRA_META", "BACKBONES", "ResNet", "ResNetC4Head", "VGG16", "VGG16FCHead",
]


@dataclass(frozen=True)
class BackboneInfo:
    """What callers ask of a registered network instead of testing its name."""
    family: str  # "resnet", "vgg" or "cifar": the key of its builders in _FAMILIES
    c4_feature: str | None  # the stride-16 map the RPN and RoI pooling read (None: a classifier only)
    default_pool: int | None  # RoI pooling size in the paper: 14 before conv5 (ResNet), 7 before fc6 (VGG)
    fixed_pool: bool = False  # the head takes only default_pool (VGG-16's fc6 is a 7x7x512 matrix)
    has_style: bool = False  # the stride placement "pytorch" / "msra" is an option (ResNets' bottlenecks)
    fc_head: bool = False  # the C4 head is fully connected layers on the flattened RoI (VGG-16's fc6, fc7)
    residual: bool = True  # its blocks have shortcuts by design (False: Sec. 4.2's plain CIFAR nets, by name)
    label: str | None = None  # its name in the paper's figures (CIFAR nets: "plain20", "resnet110"), if it has one


# The registry: a plain dict. Adding a backbone means adding an entry here and, for a new family, its options
# class and its three builders in _FAMILIES below.
BACKBONES: dict[str, BackboneInfo] = {
    **{name: BackboneInfo("resnet", "res4", 14, has_style=True) for name in _RESNET_ARCHS},
    "vgg16": BackboneInfo("vgg", "conv5", 7, fixed_pool=True, fc_head=True),
    # the paper's CIFAR-10 study (Sec. 4.2): classifiers of 32x32 images, no detection trunk
    **{name: BackboneInfo("cifar", None, None, residual=residual, label=name.removeprefix("cifar_"))
       for name, (_, residual) in CIFAR_DEPTHS.items()},
}


def list_backbones() -> list[str]:
    """Names accepted by build_backbone and build_c4 (detection trunks), and by build_classifier."""
    return [name for name, entry in BACKBONES.items() if entry.c4_feature is not None]


def list_classifiers() -> list[str]:
    """Names accepted by build_classifier: the detection backbones and the CIFAR-10 nets (``cifar_*``)."""
    return list(BACKBONES)


def _entry(name: str) -> BackboneInfo:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {list_classifiers()}")
    return BACKBONES[name]


def _prepare(name: str, weights, style: str | None, norm: str, weights_meta: dict[str, Any] | None = None):
    """Read weights (if any) and settle style, BN eps and the preprocessing meta.

    `weights_meta` stands in for a weights file's meta when the weights come later (e.g. a detector
    checkpoint loaded after building): the network is then built for that style, eps and input.
    """
    entry = _entry(name)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {list(NORMS)}")
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    if weights is None and weights_meta is not None:
        meta = validate_meta(weights_meta, "weights_meta")
        return entry, None, meta, resolve_style(meta, style, "weights_meta")
    if weights is None:
        style = style or "pytorch"
        return entry, None, default_meta(style), style
    state, meta = read_weights(weights)
    style = resolve_style(meta, style, os.fspath(weights))
    return entry, state, meta, style


def _detection_entry(name: str) -> BackboneInfo:
    entry = _entry(name)
    if entry.c4_feature is None:
        raise ValueError(f"{name}: a CIFAR-10 classifier (32x32 images); it has no detection trunk, "
                         "use build_classifier")
    return entry


def _finish(module: nn.Module, meta: dict[str, Any], name: str, style: str) -> nn.Module:
    module.weights_meta = {**meta, "arch": name, "style": style}
    return module


#: Detection fine-tuning defaults (frozen BN, freeze_at 2, option B) and ImageNet training defaults,
#: read from the config dataclasses so that each value is written once.
_DET = BackboneConfig()
_CLS = ClsModelConfig()


def build_backbone(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    style: str | None = _DET.style,
    norm: str = _DET.norm,
    freeze_at: int = _DET.freeze_at,
    out_features: Sequence[str] = ("res4",),
    shortcut: str | None = _DET.shortcut,
    width: int = _DET.width,
    caffe_stem_pool: bool = _DET.caffe_stem_pool,
) -> nn.Module:
    """A feature trunk: forward(images[N,3,H,W]) -> OrderedDict name -> map.

    ResNets produce `stem`, `res2`..`res5`; VGG-16 produces `conv1`..`conv5` (for VGG the default
    `("res4",)` means its stride-16 map, `conv5`). Stages after the last requested map are not built.
    weights: a torchvision or detres file; `fc`/`classifier` and unbuilt stages are dropped, any other
    mismatch is an error. style: "pytorch" (torchvision v1.5) or "msra" (the paper's Caffe model);
    None takes the weights' style ("pytorch" without weights), and a style the weights contradict is an error.
    norm: "frozen_bn", "bn", "syncbn" or "gn" (VGG-16 has no norm layers). freeze_at: 0..5, as detectron2.
    width: ResNets' first-stage channels (the paper's 64; every stage doubles it).
    caffe_stem_pool: ResNets' pool1 as the MSRA Caffe models (kernel 3, stride 2, no padding, ceil mode);
    meant for the "msra" style with the MSRA weights. VGG-16 has no such pool and ignores it.
    """
    _detection_entry(name)
    options = backbone_options(name, style=style, shortcut=shortcut, width=width, caffe_stem_pool=caffe_stem_pool)
    entry, state, meta, style = _prepare(name, weights, style, norm)
    out_features = (out_features,) if isinstance(out_features, str) else tuple(out_features)
    net, drop = _FAMILIES[entry.family].trunk(name, norm_factory(norm, eps=meta["bn_eps"]), style, options,
                                              out_features)
    if state is not None:
        load_state(net, state, source=os.fspath(weights), drop_prefixes=drop)
    net.freeze(freeze_at)
    return _finish(net, meta, name, style)


def build_c4(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    style: str | None = _DET.style,
    norm: str = _DET.norm,
    freeze_at: int = _DET.freeze_at,
    shortcut: str | None = _DET.shortcut,
    weights_meta: dict[str, Any] | None = None,
    width: int = _DET.width,
    caffe_stem_pool: bool = _DET.caffe_stem_pool,
) -> tuple[nn.Module, nn.Module]:
    """The paper's Faster R-CNN split of one network (Appendix A) -> (trunk, head).

    trunk: images -> {"res4": [N, C4, H/16, W/16]} (VGG: {"conv5": ...}); has `out_channels`.
    head: ResNets take RoI features [R, C4, 14, 14] and run the whole conv5 stage (first block stride
    2) plus global average pooling -> [R, 2048] (512 for ResNet-18/34); VGG-16 takes [R, 512, 7, 7]
    and runs flatten, fc6, fc7 -> [R, 4096]. One checkpoint fills both (loaded before the split).
    weights_meta: without `weights`, build for this preprocessing/style/BN eps (a detector checkpoint
    that will be loaded afterwards carries it). caffe_stem_pool: as :func:`build_backbone`.
    """
    _detection_entry(name)
    options = backbone_options(name, style=style, shortcut=shortcut, width=width, caffe_stem_pool=caffe_stem_pool)
    entry, state, meta, style = _prepare(name, weights, style, norm, weights_meta)
    net, drop = _FAMILIES[entry.family].c4(name, norm_factory(norm, eps=meta["bn_eps"]), style, options)
    if state is not None:
        load_state(net, state, source=os.fspath(weights), drop_prefixes=drop)
    net.freeze(freeze_at)
    trunk, head = net.split_c4()
    _finish(trunk, meta, name, style)
    _finish(head, meta, name, style)
    return trunk, head


def build_classifier(
    name: str,
    *,
    num_classes: int | None = None,
    style: str | None = None,
    norm: str = _CLS.norm,
    shortcut: str | None = _CLS.shortcut,
    weights: str | os.PathLike | None = None,
    width: int = _CLS.width,
    caffe_stem_pool: bool = _CLS.caffe_stem_pool,
) -> nn.Module:
    """The classifier: forward(images[N,3,224,224]) -> logits[N, num_classes] (CIFAR nets: [N,3,32,32]).

    Its state_dict keys are exactly torchvision's, so torchvision checkpoints load with no conversion.
    num_classes: None = the family's data set (1000 for ImageNet nets, 10 for the CIFAR-10 nets).
    style: as build_backbone (None: the weights' style, else "pytorch"). caffe_stem_pool: as build_backbone
    (ResNets; a net pretrained with it runs on the grid of detection's ``caffe_stem_pool: true``).
    """
    options = backbone_options(name, style=style, shortcut=shortcut, width=width, caffe_stem_pool=caffe_stem_pool)
    entry, state, meta, style = _prepare(name, weights, style, norm)
    family = _FAMILIES[entry.family]
    net = family.classifier(name, num_classes if num_classes is not None else family.num_classes,
                            norm_factory(norm, eps=meta["bn_eps"]), style, options)
    if state is not None:
        load_state(net, state, source=os.fspath(weights))
    return _finish(net, meta, name, style)


@dataclass(frozen=True)
class ResNetOptions:
    """What a ResNet is built with besides its name, norm, style and weights (defaults: the config's)."""
    shortcut: str | None = _DET.shortcut  # "A", "B", "C", or "none"/None: the plain net
    width: int = _DET.width  # channels of conv1 and conv2_x
    caffe_stem_pool: bool = _DET.caffe_stem_pool  # pool1 as the MSRA Caffe models


@dataclass(frozen=True)
class VGGOptions:
    """VGG-16 is built as published (configuration D): it takes no options."""


@dataclass(frozen=True)
class CifarOptions:
    """The CIFAR-10 nets (Sec. 4.2): the name fixes depth and shortcut (option A for ``cifar_resnet*``, none
    for ``cifar_plain*``); ``shortcut`` may repeat it or be "A" (the study's shared config sets A for all)."""
    shortcut: str | None = _DET.shortcut


class OptionError(ValueError):
    """An option a network does not take, set to a value that would change a network that took it; ``option``
    is its keyword (``"caffe_stem_pool"``), so a caller can name its own key."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _neutral() -> dict[str, tuple]:
    """The value of each option at which it asks nothing (its default in the options classes, which are the
    builders'): a network that does not take the option accepts it only there (style: None or "pytorch", the
    stride placement of a net without bottlenecks)."""
    out: dict[str, tuple] = {"style": (None, "pytorch")}
    for family in _FAMILIES.values():
        for f in fields(family.options):
            out.setdefault(f.name, (f.default,))
    return out


def backbone_options(name: str, **given: Any):
    """The options object of ``name``'s family (:class:`ResNetOptions`, :class:`VGGOptions`,
    :class:`CifarOptions`) from keyword values; an option the family does not take is refused by name
    (:class:`OptionError`) unless it has its neutral value, e.g. ``backbone_options("vgg16", caffe_stem_pool=True)``."""
    info = _entry(name)
    family = _FAMILIES[info.family]
    taken = [f.name for f in fields(family.options)] + (["style"] if info.has_style else [])
    neutral = _neutral()
    for key, value in given.items():
        if key not in neutral:
            raise OptionError(key, f"{name}: unknown backbone option {key!r}; options: {sorted(neutral)}")
        if key not in taken and value not in neutral[key]:
            raise OptionError(key, f"{name}: a {info.family} network has no {key} option (it takes "
                                   f"{', '.join(taken) or 'none'}); got {key}={value!r}, leave it at "
                                   f"{neutral[key][-1]!r}")
    options = family.options(**{k: v for k, v in given.items() if k in taken and k != "style"})
    family.check(name, options)
    return options


def backbone_info(name: str) -> BackboneInfo:
    """The registry's entry of ``name`` (family, C4 map, RoI sizes, style, head kind); ValueError if unknown."""
    return _entry(name)


@dataclass(frozen=True)
class _Family:
    """How one family builds its three networks, typed by its options class; the entries name their family."""
    options: type  # the family's options dataclass: the options its networks take
    trunk: Any  # (name, norm, style, options, out_features) -> (net, prefixes to drop)
    c4: Any  # (name, norm, style, options) -> (net with split_c4, prefixes to drop)
    classifier: Any  # (name, num_classes, norm, style, options) -> net
    num_classes: int  # the family's data set: ImageNet's 1000, CIFAR-10's 10
    check: Any = lambda name, options: None  # (name, options) -> None; OptionError for a value the net refuses


def _resnet_trunk(name: str, norm, style: str, o: ResNetOptions, out_features: tuple[str, ...]):
    net = ResNet(name, norm=norm, style=style, shortcut=o.shortcut, out_features=out_features, width=o.width,
                 caffe_stem_pool=o.caffe_stem_pool)
    built = {m for _, m in net._stages}
    return net, ["fc."] + [f"layer{i}." for i in range(1, 5) if f"layer{i}" not in built]


def _resnet_check(name: str, o: ResNetOptions) -> None:
    try:
        check_shortcut(o.shortcut)
    except ValueError as e:
        raise OptionError("shortcut", str(e)) from None
    if isinstance(o.width, bool) or not isinstance(o.width, int) or o.width < 1:
        raise OptionError("width", f"{name}: width must be a positive number of channels, got {o.width!r}")


def _vgg_trunk(name: str, norm, style: str, o: VGGOptions, out_features: tuple[str, ...]):
    net = VGG16(out_features=("conv5",) if out_features == ("res4",) else out_features)  # "res4": its stride-16 map
    return net, ["classifier."] + [f"features.{i}." for i in range(len(net.features), 31)]


def _no_trunk(name, *args):
    raise ValueError(f"{name}: a CIFAR-10 classifier (32x32 images); it has no detection trunk, use build_classifier")


def _cifar_check(name: str, o: CifarOptions) -> None:
    _, residual = cifar_spec(name)
    own = "A" if residual else "none"
    if o.shortcut not in (_DET.shortcut, "A", own, *((None,) if own == "none" else ())):
        raise OptionError("shortcut", f"{name}: its name fixes the shortcut ({own}); got shortcut={o.shortcut!r}")


def _cifar_classifier(name: str, num_classes: int, norm, style: str, o: CifarOptions):
    n, residual = cifar_spec(name)  # the shortcut is part of the name: option A, or none for the plain nets
    return CifarResNet(n, residual=residual, num_classes=num_classes, norm=norm)


_FAMILIES: dict[str, _Family] = {
    "resnet": _Family(
        options=ResNetOptions, trunk=_resnet_trunk, check=_resnet_check,
        c4=lambda name, norm, style, o: (ResNet(
            name, norm=norm, style=style, shortcut=o.shortcut, out_features=("res4", "res5"), width=o.width,
            caffe_stem_pool=o.caffe_stem_pool), ["fc."]),
        classifier=lambda name, k, norm, style, o: ResNetClassifier(
            name, num_classes=k, norm=norm, style=style, shortcut=o.shortcut, width=o.width,
            caffe_stem_pool=o.caffe_stem_pool),
        num_classes=_CLS.num_classes),
    "vgg": _Family(options=VGGOptions, trunk=_vgg_trunk, c4=lambda name, norm, style, o: (VGG16C4(), ["classifier.6."]),
                   classifier=lambda name, k, norm, style, o: VGG16Classifier(num_classes=k),
                   num_classes=_CLS.num_classes),
    "cifar": _Family(options=CifarOptions, trunk=_no_trunk, c4=_no_trunk, classifier=_cifar_classifier,
                     num_classes=10, check=_cifar_check),
}


def default_pool_size(name: str) -> int:
    """RoI pooling resolution of the paper's head for this backbone: 14 (ResNet) or 7 (VGG-16)."""
    return _entry(name).default_pool


def c4_feature_name(name: str) -> str:
    """The name of the stride-16 map the C4 trunk returns: "res4" or "conv5"."""
    return _entry(name).c4_feature


def has_style(name: str) -> bool:
    """Whether the stride placement ("pytorch" / "msra") is an option of this network (ResNets)."""
    return _entry(name).has_style


def fixed_pool_size(name: str) -> int | None:
    """The only RoI pooling size this backbone's head takes (VGG-16: 7, its fc6), or None (any size)."""
    entry = _entry(name)
    return entry.default_pool if entry.fixed_pool else None
