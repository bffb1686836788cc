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
from dataclasses import dataclass
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
    "read_weights", "NORMS", "default_pool_size", "fixed_pool_size", "has_style",
    "SHORTCUTS", "STYLES", "CifarResNet",
    "TORCHVISION_META", "MSRA_META", "BACKBONES", "ResNet", "ResNetC4Head", "VGG16", "VGG16FCHead",
]


@dataclass(frozen=True)
class _Entry:
    family: str  # "resnet", "vgg" or "cifar"
    c4_feature: str | None  # the stride-16 map the RPN and RoI pooling read (None: a classifier only)
    default_pool: int | None  # RoI pooling size in the paper: 14 before conv5 (ResNet), 7 before fc6 (VGG)
    fixed_pool: bool = False  # the head takes only default_pool (VGG-16's fc6 is a 7x7x512 matrix)
    has_width: bool = False  # the width and style options apply (ResNets; VGG-16 and the CIFAR nets are as published)


# The registry: a plain dict. Adding a backbone means adding an entry here and its family's three builders
# in _FAMILIES below.
BACKBONES: dict[str, _Entry] = {
    **{name: _Entry("resnet", "res4", 14, has_width=True) for name in _RESNET_ARCHS},
    "vgg16": _Entry("vgg", "conv5", 7, fixed_pool=True),
    # the paper's CIFAR-10 study (Sec. 4.2): classifiers of 32x32 images, no detection trunk
    **{name: _Entry("cifar", None, None) for name in CIFAR_DEPTHS},
}


def list_backbones() -> list[str]:
    """Names accepted by build_backbone and build_c4 (detection trunks), and by build_classifier."""
    return [name for name, entry in BACKBONES.items() if entry.c4_feature is not None]


def list_classifiers() -> list[str]:
    """Names accepted by build_classifier: the detection backbones and the CIFAR-10 nets (``cifar_*``)."""
    return list(BACKBONES)


def _entry(name: str) -> _Entry:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {list_classifiers()}")
    return BACKBONES[name]


def _prepare(name: str, weights, style: str | None, norm: str, shortcut: str | None,
             weights_meta: dict[str, Any] | None = None, width: int = 64):
    """Read weights (if any) and settle style, BN eps and the preprocessing meta.

    `weights_meta` stands in for a weights file's meta when the weights come later (e.g. a detector
    checkpoint loaded after building): the network is then built for that style, eps and input.
    """
    entry = _entry(name)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {list(NORMS)}")
    check_shortcut(shortcut)
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    if not entry.has_width and width != 64:
        raise ValueError(f"width={width}: only ResNets have a width option ({name} is built as published)")
    if weights is None and weights_meta is not None:
        meta = validate_meta(weights_meta, "weights_meta")
        return entry, None, meta, resolve_style(meta, style, "weights_meta")
    if weights is None:
        style = style or "pytorch"
        return entry, None, default_meta(style), style
    state, meta = read_weights(weights)
    style = resolve_style(meta, style, os.fspath(weights))
    return entry, state, meta, style


def _detection_entry(name: str) -> _Entry:
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
    entry, state, meta, style = _prepare(name, weights, style, norm, shortcut, width=width)
    out_features = (out_features,) if isinstance(out_features, str) else tuple(out_features)
    net, drop = _FAMILIES[entry.family].trunk(name, norm_factory(norm, eps=meta["bn_eps"]), style, shortcut,
                                              out_features, width, caffe_stem_pool)
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
    entry, state, meta, style = _prepare(name, weights, style, norm, shortcut, weights_meta, width=width)
    net, drop = _FAMILIES[entry.family].c4(name, norm_factory(norm, eps=meta["bn_eps"]), style, shortcut, width,
                                           caffe_stem_pool)
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
    entry, state, meta, style = _prepare(name, weights, style, norm, shortcut, width=width)
    family = _FAMILIES[entry.family]
    net = family.classifier(name, num_classes if num_classes is not None else family.num_classes,
                            norm_factory(norm, eps=meta["bn_eps"]), style, shortcut, width, caffe_stem_pool)
    if state is not None:
        load_state(net, state, source=os.fspath(weights))
    return _finish(net, meta, name, style)


@dataclass(frozen=True)
class _Family:
    """How one family builds its three networks; the registry's entries name their family."""
    trunk: Any  # (name, norm, style, shortcut, out_features, width, caffe_stem_pool) -> (net, prefixes to drop)
    c4: Any  # (name, norm, style, shortcut, width, caffe_stem_pool) -> (net with split_c4, prefixes to drop)
    classifier: Any  # (name, num_classes, norm, style, shortcut, width, caffe_stem_pool) -> net
    num_classes: int  # the family's data set: ImageNet's 1000, CIFAR-10's 10


def _resnet_trunk(name, norm, style, shortcut, out_features, width, caffe_stem_pool):
    net = ResNet(name, norm=norm, style=style, shortcut=shortcut, out_features=out_features, width=width,
                 caffe_stem_pool=caffe_stem_pool)
    built = {m for _, m in net._stages}
    return net, ["fc."] + [f"layer{i}." for i in range(1, 5) if f"layer{i}" not in built]


def _vgg_trunk(name, norm, style, shortcut, out_features, width, caffe_stem_pool):
    net = VGG16(out_features=("conv5",) if out_features == ("res4",) else out_features)  # "res4": its stride-16 map
    return net, ["classifier."] + [f"features.{i}." for i in range(len(net.features), 31)]


def _no_trunk(name, *args):
    raise ValueError(f"{name}: a CIFAR-10 classifier (32x32 images); it has no detection trunk, use build_classifier")


def _cifar_classifier(name, num_classes, norm, style, shortcut, width, caffe_stem_pool):
    n, residual = cifar_spec(name)  # the shortcut is part of the name: option A, or none for the plain nets
    return CifarResNet(n, residual=residual, num_classes=num_classes, norm=norm)


_FAMILIES: dict[str, _Family] = {
    "resnet": _Family(
        trunk=_resnet_trunk,
        c4=lambda name, norm, style, shortcut, width, pool: (ResNet(
            name, norm=norm, style=style, shortcut=shortcut, out_features=("res4", "res5"), width=width,
            caffe_stem_pool=pool), ["fc."]),
        classifier=lambda name, k, norm, style, shortcut, width, pool: ResNetClassifier(
            name, num_classes=k, norm=norm, style=style, shortcut=shortcut, width=width, caffe_stem_pool=pool),
        num_classes=_CLS.num_classes),
    "vgg": _Family(trunk=_vgg_trunk, c4=lambda *args: (VGG16C4(), ["classifier.6."]),
                   classifier=lambda name, k, *args: VGG16Classifier(num_classes=k), num_classes=_CLS.num_classes),
    "cifar": _Family(trunk=_no_trunk, c4=_no_trunk, classifier=_cifar_classifier, num_classes=10),
}


def default_pool_size(name: str) -> int:
    """RoI pooling resolution of the paper's head for this backbone: 14 (ResNet) or 7 (VGG-16)."""
    return _entry(name).default_pool


def c4_feature_name(name: str) -> str:
    """The name of the stride-16 map the C4 trunk returns: "res4" or "conv5"."""
    return _entry(name).c4_feature


def has_style(name: str) -> bool:
    """Whether the stride placement ("pytorch" / "msra") is an option of this network (ResNets)."""
    return _entry(name).has_width


def fixed_pool_size(name: str) -> int | None:
    """The only RoI pooling size this backbone's head takes (VGG-16: 7, its fc6), or None (any size)."""
    entry = _entry(name)
    return entry.default_pool if entry.fixed_pool else None
