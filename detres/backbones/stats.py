"""Model complexity as the paper's Table 1 counts it: multiply-adds of conv and fc layers.

FLOPs are measured with torch.utils.flop_counter (which counts 2 FLOPs per multiply-add), so the
figures come from the network that actually runs, not from a formula kept beside it.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detres.backbones import build_classifier

__all__ = ["PAPER_TABLE1_GFLOPS", "count_params", "count_gflops", "classifier_stats"]

# Table 1 of He et al. (2015): multiply-adds (x10^9) at 224x224, for the original (msra) models.
PAPER_TABLE1_GFLOPS: dict[str, float] = {
    "resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3,
    "vgg16": 15.3,
}


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (FrozenBatchNorm2d keeps its affine in buffers, which are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gflops(module: nn.Module, inputs: Any = None, *, input_shape: Sequence[int] = (1, 3, 224, 224)) -> float:
    """Multiply-adds / 1e9 of one forward pass in eval mode, per the first dimension of the input.

    `inputs` may be given directly (e.g. a list of images for a detector); otherwise a zero tensor of
    `input_shape` is used and the count is divided by its batch size.
    """
    was_training = module.training
    module.eval()
    batch = 1
    if inputs is None:
        inputs = torch.zeros(*input_shape)
        batch = input_shape[0]
    try:
        with FlopCounterMode(display=False) as counter:
            module(inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() / 2 / 1e9 / batch


def classifier_stats(name: str, style: str, *, size: int = 224) -> dict[str, Any]:
    """``{"backbone", "style", "params_m", "gflops", "paper_gflops", "diff_pct"}`` of one classifier."""
    model = build_classifier(name, style=style).eval()
    gflops = count_gflops(model, input_shape=(1, 3, size, size))
    paper = PAPER_TABLE1_GFLOPS.get(name) if size == 224 else None
    return {
        "backbone": name, "style": style, "params_m": count_params(model) / 1e6, "gflops": gflops,
        "paper_gflops": paper, "diff_pct": None if paper is None else 100.0 * (gflops - paper) / paper,
    }
