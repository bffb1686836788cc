"""Whole detectors converted from other code bases (detectron2 R50-C4 / R101-C4), built and loaded.

The weight conversion itself is :func:`detres.backbones.convert.convert_weights`; it records what the
file is in ``meta["detector"]`` (``recipe``, ``backbone``, ``num_classes``). This module knows each
recipe's :class:`~detres.modeling.spec.DetectorSpec` and builds the matching network (it needs
:func:`detres.modeling.build_detector`, hence its place above the backbones).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from detres.backbones.weights import META_KEYS, read_weights
from detres.modeling.detector import build_detector
from detres.modeling.spec import BackboneSpec, DetectorSpec, InputSpec, PoolerSpec, RoISpec, RPNSpec

__all__ = ["detectron2_c4_spec", "converted_detector_spec", "build_converted_detector", "RECIPES"]


def detectron2_c4_spec(arch: str) -> DetectorSpec:
    """detectron2's R50-C4 / R101-C4 settings (Base-RCNN-C4.yaml and its defaults) for the ResNet ``arch``;
    the fields not named here are detres's defaults (training-only ones do not matter for a converted model)."""
    return DetectorSpec(
        backbone=BackboneSpec(name=arch, weights=None, style="msra"),  # stride in the 1x1, as detectron2's MSRA nets
        # ROI_BOX_HEAD.POOLER_TYPE ROIAlignV2 (the half-pixel shift), POOLER_SAMPLING_RATIO 0 (adaptive),
        # POOLER_RESOLUTION 14 (res5's stride 2 makes it 7x7)
        pooler=PoolerSpec(type="roi_align", resolution=14, sampling_ratio=0, aligned=True),
        # ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS (h / w); RPN.PRE_NMS_TOPK_TEST (C4), POST_NMS_TOPK_TEST, NMS_THRESH
        rpn=RPNSpec(anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), pre_nms_top_n_test=6000,
                    post_nms_top_n_test=1000, nms_thresh=0.7),
        # ROI_HEADS.SCORE_THRESH_TEST, NMS_THRESH_TEST; TEST.DETECTIONS_PER_IMAGE
        roi=RoISpec(score_thresh=0.05, nms_thresh=0.5, detections_per_img=100),
        # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST: the detector resizes (detectron2 resizes inside its pipeline)
        input=InputSpec(min_size=800, max_size=1333),
    )


#: ``meta["detector"]["recipe"]`` -> the spec of that kind of converted detector, given its backbone name.
RECIPES = {"detectron2_c4": detectron2_c4_spec}


def converted_detector_spec(meta: Mapping[str, Any], *,
                            path: str | os.PathLike = "weights") -> tuple[DetectorSpec, int]:
    """``(spec, num_classes)`` of the converted detector a weights file's ``meta`` describes.

    Files written before the recipe was recorded carry build_detector's old keyword arguments instead; they
    were all detectron2 R-C4 conversions, so their ``backbone`` and ``num_classes`` select the same recipe.
    """
    settings = meta.get("detector")
    if not isinstance(settings, Mapping) or "backbone" not in settings or "num_classes" not in settings:
        raise ValueError(f"{path}: no meta['detector'] with a backbone and num_classes: not a converted detector "
                         "(convert it with tools/convert_weights.py)")
    recipe = settings.get("recipe", "detectron2_c4")
    if recipe not in RECIPES:
        raise ValueError(f"{path}: meta['detector']['recipe'] {recipe!r} is unknown; known: {list(RECIPES)}")
    return RECIPES[recipe](settings["backbone"]), int(settings["num_classes"])


def build_converted_detector(path: str | os.PathLike, *, spec: DetectorSpec | None = None) -> nn.Module:
    """Build the detector a converted detectron2 file describes and load it (strict keys).

    ``build_detector(spec, num_classes, weights_meta=<the file's preprocessing>)``: BGR, 0..255,
    detectron2's pixel mean, msra style, FrozenBN eps 1e-5; ``spec`` None = the file's recipe
    (:func:`converted_detector_spec`), or a changed copy of it (e.g. another ``roi.score_thresh``).
    A spec's ``backbone.weights`` takes ImageNet backbones only, which is why a whole detector goes through here.
    """
    state, meta = read_weights(path)
    file_spec, num_classes = converted_detector_spec(meta, path=path)
    spec = spec or file_spec
    norm_meta = {k: meta[k] for k in (*META_KEYS, "arch")}
    model = build_detector(spec, num_classes, weights_meta=norm_meta)  # preprocessing, style and BN eps of the file
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: does not fit build_detector({spec}, {num_classes}): missing "
                         f"{result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}")
    return model
