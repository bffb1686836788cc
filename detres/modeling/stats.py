"""Complexity of the C4 detector: parameters and multiply-adds per image with a fixed number of RoIs.

Counted with :func:`detres.backbones.stats.count_gflops` (torch.utils.flop_counter): the trunk
(conv1..conv4), the RPN head (3x3 conv + sibling 1x1s) on the stride-16 map, and the RoI head (conv5 +
pooling, or fc6/fc7 for VGG-16) and predictor on exactly ``proposals`` RoIs. Not counted (no
multiply-adds by flop_counter's rules): anchor generation, box decoding, NMS, RoIAlign/RoIPool
sampling, input normalisation.
"""
from __future__ import annotations

from typing import Any

import torch

from detres.backbones.stats import count_gflops, count_params
from detres.modeling.detector import build_detector
from detres.modeling.spec import BackboneSpec, DetectorSpec, InputSpec, RPNSpec

__all__ = ["detector_stats", "tame_random_weights"]


def detector_stats(name: str, style: str, *, height: int = 600, width: int = 1000, proposals: int = 300,
                   num_classes: int = 21) -> dict[str, Any]:
    """``{"backbone", "style", "params_m", "gflops", "rois"}`` of the C4 detector on one image."""
    spec = DetectorSpec(backbone=BackboneSpec(name=name, style=style),
                        rpn=RPNSpec(post_nms_top_n_test=proposals, nms_thresh=1.0),
                        input=InputSpec(max_size=max(1000, height, width)))
    model = build_detector(spec, num_classes).eval()
    tame_random_weights(model)
    seen: list[int] = []
    handle = model.roi_heads.box_head.register_forward_hook(lambda m, inp, out: seen.append(int(inp[0].shape[0])))
    try:
        gflops = count_gflops(model, [torch.rand(3, height, width)])
    finally:
        handle.remove()
    return {"backbone": name, "style": style, "params_m": count_params(model) / 1e6, "gflops": gflops,
            "rois": seen[0] if seen else 0, "image": f"{height}x{width}"}


@torch.no_grad()
def tame_random_weights(model: torch.nn.Module) -> None:
    """Zero the last norm scale of every residual branch (its block becomes its shortcut).

    With random weights and frozen BN (mean 0, var 1) activations grow through the blocks to inf/NaN,
    and NaN scores leave the RPN without proposals. Multiply-adds depend on shapes only, so this
    changes the values, not the count.
    """
    for m in model.modules():
        last = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None) if hasattr(m, "downsample") else None
        if last is not None and hasattr(last, "weight"):
            last.weight.zero_()
