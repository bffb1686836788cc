"""Reading pretrained weights and the preprocessing that travels with them.

A weights file is either
- a plain state dict, as torchvision publishes (its preprocessing is TORCHVISION_META), or
- a detres file `{"model": state_dict, "meta": {...}}`; training checkpoints have this form too, so a
  classifier trained by tools/train_cls.py is a valid `weights=` for detection.

The meta records how the network expects its input. Weights and preprocessing that do not match cost
up to 15 VOC mAP without any error (maskrcnn-benchmark #643), so a mismatch here is an error.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Iterable

import torch
from torch import nn

from detres.utils.io import check_zip_crc

# torchvision's ImageNet weights: RGB in [0, 1], normalised by the ImageNet mean/std.
TORCHVISION_META: dict[str, Any] = {
    "style": "pytorch",
    "channel_order": "RGB",
    "input_range": 1.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "bn_eps": 1e-5,
}

# The original MSRA (Caffe) ResNets as Detectron distributes them: BGR in [0, 255], mean subtraction
# only, and BN folded into an affine transform (eps 0).
MSRA_META: dict[str, Any] = {
    "style": "msra",
    "channel_order": "BGR",
    "input_range": 255.0,
    "mean": [102.9801, 115.9465, 122.7717],
    "std": [1.0, 1.0, 1.0],
    "bn_eps": 0.0,
}

# The Caffe VGG-16 of py-faster-rcnn (and Fast/Faster R-CNN): BGR in [0, 255] minus py-faster-rcnn's pixel
# means (lib/fast_rcnn/config.py PIXEL_MEANS), no std. VGG-16 has no BN and no stride choice.
CAFFE_VGG_META: dict[str, Any] = {**MSRA_META, "style": "pytorch", "bn_eps": 1e-5}

#: ``--preprocess`` choices of tools/convert_weights.py: the input a torchvision-layout file expects.
PREPROCESSING: dict[str, dict[str, Any]] = {"torchvision": TORCHVISION_META, "caffe": CAFFE_VGG_META}

META_KEYS = ("style", "channel_order", "input_range", "mean", "std", "bn_eps")


def default_meta(style: str) -> dict[str, Any]:
    """The preprocessing a network of `style` gets when no weights say otherwise.

    Without weights BN is trained, so eps stays at the usual 1e-5 whatever the style.
    """
    meta = copy.deepcopy(MSRA_META if style == "msra" else TORCHVISION_META)
    meta["bn_eps"] = 1e-5
    return meta


def validate_meta(meta: Any, source: str) -> dict[str, Any]:
    """Check a meta dict read from `source`; raise ValueError naming the file and the bad field."""
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: 'meta' must be a dict, got {type(meta).__name__}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{source}: weights meta lacks {missing}")
    if meta["style"] not in ("pytorch", "msra"):
        raise ValueError(f"{source}: meta style {meta['style']!r} is not 'pytorch' or 'msra'")
    if meta["channel_order"] not in ("RGB", "BGR"):
        raise ValueError(f"{source}: meta channel_order {meta['channel_order']!r} is not 'RGB' or 'BGR'")
    for k in ("mean", "std"):
        if len(meta[k]) != 3:
            raise ValueError(f"{source}: meta {k} must have 3 values, got {meta[k]}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in meta[k]):
            raise ValueError(f"{source}: meta {k} must be 3 finite numbers, got {meta[k]}")
    if not isinstance(meta["input_range"], (int, float)) or not math.isfinite(meta["input_range"]) \
            or meta["input_range"] <= 0:
        raise ValueError(f"{source}: meta input_range must be a positive number, got {meta['input_range']!r}")
    if any(float(s) <= 0 for s in meta["std"]):
        raise ValueError(f"{source}: meta std must be positive, got {meta['std']}")
    return dict(meta)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file safely (`weights_only=True`). Returns (state_dict, meta).

    `path` may also be a weights name `source:id` (`msra:R-101`, `torchvision:resnet50`, `caffe:vgg16`; see
    `detres.backbones.hub.list_weights`): downloaded and converted once into the cache, read from there after.
    """
    from detres.backbones.hub import is_weights_name, weights_path

    if is_weights_name(path):
        path = weights_path(path)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path} (model.backbone.weights=null trains from random "
                                "weights; a name such as msra:R-101 or torchvision:resnet101 is downloaded once; or "
                                "make the file with tools/convert_weights.py from torchvision's or the MSRA "
                                "checkpoint: README, 'Three ways to get backbone weights')")
    check_zip_crc(path)  # a flipped bit would otherwise load as silently wrong weights
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        raise ValueError(f"{path}: cannot be read as a torch weights file ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state, meta = obj["model"], obj.get("meta")
        meta = TORCHVISION_META if meta is None else validate_meta(meta, path)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, TORCHVISION_META
    else:
        raise ValueError(f"{path}: expected a state dict or {{'model': state_dict, 'meta': ...}}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: non-tensor entries in the state dict: {bad[:5]}")
    return dict(state), copy.deepcopy(dict(meta))


def resolve_style(meta: dict[str, Any], style: str | None, path: str) -> str:
    """The style to build: the requested one, which must agree with the weights."""
    if style is None:
        return meta["style"]
    if style != meta["style"]:
        raise ValueError(
            f"{path}: these weights are {meta['style']!r}-style but style={style!r} was requested; "
            f"build with style={meta['style']!r} (the stride placement and the input preprocessing "
            f"come with the weights)"
        )
    return style


def load_state(module: nn.Module, state: dict[str, torch.Tensor], *, source: str,
               drop_prefixes: Iterable[str] = ()) -> None:
    """Load `state` into `module`; keys of parts that were not built (`drop_prefixes`) are dropped.

    Any other missing or unexpected key, or a shape mismatch, is a ValueError that lists them.
    """
    drop = tuple(drop_prefixes)
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    own = module.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise ValueError(f"{source}: shape mismatch: " + "; ".join(shapes[:10]))
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: weights do not fit the network; missing keys {list(result.missing_keys)[:20]} "
            f"({len(result.missing_keys)}), unexpected keys {list(result.unexpected_keys)[:20]} "
            f"({len(result.unexpected_keys)})"
        )
