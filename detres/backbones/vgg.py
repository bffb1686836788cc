"""VGG-16 (configuration D), the paper's detection baseline, with torchvision's module names.

`features.N` indices are torchvision's, so its ImageNet checkpoint loads as it is. The outputs are
named after the conv stages: `conv1` (stride 1, 64 channels) to `conv5` (conv5_3 after ReLU, stride 16,
512 channels). The last max-pool (`features.30`) is never part of the trunk: Faster R-CNN pools RoIs
from conv5_3 at stride 16.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .layers import freeze
from .spec import DeclaredFeatures, FeatureSpec, check_out_features

# Configuration D: channels per conv, "M" for a 2x2 max-pool.
_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
STAGE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")


def _make_features(last_stage: int | None) -> tuple[nn.Sequential, dict[str, tuple[FeatureSpec, int]]]:
    """Build `features` up to the end of stage `last_stage` (0-based), or all of it (with the last
    pool) when None. Returns the Sequential and name -> (spec, index after which the map is taken)."""
    layers: list[nn.Module] = []
    declared: dict[str, tuple[FeatureSpec, int]] = {}
    in_ch, stride, stage = 3, 1, 0
    for v in _CFG_D:
        if v == "M":
            declared[STAGE_NAMES[stage]] = (FeatureSpec(in_ch, stride), len(layers) - 1)
            if last_stage is not None and stage == last_stage:
                break
            layers.append(nn.MaxPool2d(2, 2))
            stride *= 2
            stage += 1
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers), declared


def _fc67(dropout: float = 0.5) -> list[nn.Module]:
    """fc6 and fc7 with ReLU and dropout, as torchvision's classifier.0..5."""
    return [nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout)]


def _init_weights(module: nn.Module) -> None:
    """torchvision's VGG initialisation, for training from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGG16(DeclaredFeatures, nn.Module):
    """VGG-16 trunk. forward(images[N, 3, H, W]) -> OrderedDict of the requested conv stages."""

    def __init__(self, *, out_features: Sequence[str] = ("conv5",)):
        super().__init__()
        self._out_features = check_out_features(out_features, STAGE_NAMES)
        last = STAGE_NAMES.index(self._out_features[-1])
        self.features, declared = _make_features(last)
        self._taps = {name: idx for name, (_, idx) in declared.items()}
        self._all_specs = {name: spec for name, (spec, _) in declared.items()}
        self.style = "pytorch"
        _init_weights(self)

    def freeze(self, freeze_at: int) -> None:
        """Freeze conv1..conv{freeze_at}. Faster R-CNN's VGG-16 keeps conv1 and conv2 fixed (freeze_at=2)."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        if freeze_at == 0:
            return
        end = self._taps[STAGE_NAMES[min(freeze_at, len(self._taps)) - 1]]
        for i in range(end + 1):
            freeze(self.features[i])

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(x.shape)}")
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        wanted = {self._taps[n]: n for n in self._out_features}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


class VGG16C4(VGG16):
    """VGG-16 built whole for detection: trunk up to conv5_3 plus fc6/fc7, so one checkpoint fills both."""

    def __init__(self):
        super().__init__(out_features=("conv5",))
        self.classifier = nn.Sequential(*_fc67())
        _init_weights(self.classifier)

    def split_c4(self) -> tuple["VGG16", "VGG16FCHead"]:
        head = VGG16FCHead(self.classifier)
        del self.classifier  # forward() is VGG16's: the trunk now ends at conv5_3
        return self, head


class VGG16FCHead(nn.Module):
    """The baseline RoI head: flatten 7x7x512 RoI features, fc6, fc7. forward([R,512,7,7]) -> [R,4096]."""

    out_channels = 4096

    def __init__(self, classifier: nn.Sequential):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))


class VGG16Classifier(nn.Module):
    """The ImageNet classifier, with torchvision's keys (`features.N`, `classifier.N`)."""

    def __init__(self, *, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features, _ = _make_features(None)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(*_fc67(dropout), nn.Linear(4096, num_classes))
        self.style = "pytorch"
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
