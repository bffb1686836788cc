"""Normalisation layers and freezing, shared by the ResNet and VGG builders."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("frozen_bn", "bn", "syncbn", "gn")


def norm_factory(norm: str, *, eps: float = 1e-5, gn_groups: int = 32) -> Callable[[int], nn.Module]:
    """Return `make(channels) -> nn.Module` for one of NORMS.

    - "frozen_bn": torchvision's FrozenBatchNorm2d. ImageNet statistics and affine fixed, as the paper
      does when fine-tuning detection (batches of 1-2 images make BN statistics useless).
    - "bn" / "syncbn": trainable BatchNorm (SyncBatchNorm reduces statistics over all processes).
    - "gn": GroupNorm with `gn_groups` groups, for training from scratch with small batches.
    """
    if norm == "frozen_bn":
        return lambda c: FrozenBatchNorm2d(c, eps=eps)
    if norm == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps)
    if norm == "syncbn":
        return lambda c: nn.SyncBatchNorm(c, eps=eps)
    if norm == "gn":
        return lambda c: nn.GroupNorm(min(gn_groups, c), c, eps=eps)
    raise ValueError(f"unknown norm {norm!r}; choose from {list(NORMS)}")


def frozen_copy(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in `module` by a FrozenBatchNorm2d with the same statistics and affine.

    Used when a stage of a network with trainable BN is frozen: turning off gradients alone would
    still let BN update its running statistics in train mode.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = frozen_copy(child)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Freeze a part of a network: no gradients, and BatchNorm statistics no longer change."""
    for p in module.parameters():
        p.requires_grad_(False)
    return frozen_copy(module)
