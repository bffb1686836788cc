"""Whole detectors converted from other code bases (detectron2 R50-C4 / R101-C4), built and loaded.

The weight conversion itself is :func:`detres.backbones.convert.convert_weights`; it records the
settings of the source detector in ``meta["detector"]``. This module builds the matching network
(it needs :func:`detres.modeling.build_detector`, hence its place above the backbones).
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from detres.backbones.weights import META_KEYS, read_weights
from detres.modeling.detector import build_detector

__all__ = ["build_converted_detector"]


def build_converted_detector(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Build the detector a converted detectron2 file describes and load it (strict keys).

    ``build_detector(**meta["detector"], **overrides, weights_meta=<the file's preprocessing>)``: BGR,
    0..255, detectron2's pixel mean, msra style, FrozenBN eps 1e-5. ``build_detector``'s ``weights=``
    takes ImageNet backbones only, which is why a whole detector goes through here.
    """
    state, meta = read_weights(path)
    settings = meta.get("detector")
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: no meta['detector']: not a converted detector (convert it with "
                         "tools/convert_weights.py)")
    kwargs = {**settings, **overrides}
    norm_meta = {k: meta[k] for k in (*META_KEYS, "arch")}
    model = build_detector(**kwargs, weights_meta=norm_meta)  # preprocessing, style and BN eps of the file
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: does not fit build_detector({kwargs}): missing {result.missing_keys[:10]}, "
                         f"unexpected {result.unexpected_keys[:10]}")
    return model
