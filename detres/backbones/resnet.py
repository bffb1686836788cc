"""ResNet-18/34/50/101/152 of He et al. (2015), with torchvision's module names.

Two placements of the stride in a bottleneck are supported:
- "pytorch" (torchvision's "v1.5"): the stride sits in the 3x3 conv. ResNet-50: 4.1 GFLOPs.
- "msra" (the paper's original Caffe model): the stride sits in the first 1x1 conv. ResNet-50: 3.8
  GFLOPs. The MSRA weights only reproduce the paper's numbers with this placement.

Shortcuts follow the paper's Sec. 3.3 / Table 3 options:
- "A": parameter-free identity; extra channels are zero-padded and the stride subsamples.
- "B": projection (1x1 conv + norm) only where the shape changes. torchvision's choice, the default.
- "C": projection on every block.
- "none": no shortcut at all: the plain counterpart of the network (same depth, width and FLOPs), the
  paper's "plain" nets of Fig. 4 / Table 2 and Sec. 4.2.

The stem's max pool: torchvision pads by 1 (``MaxPool2d(3, 2, padding=1)``, as Detectron); the MSRA Caffe
models' ``pool1`` has no padding and Caffe's ceiling rounding (``caffe_stem_pool=True``:
``MaxPool2d(3, 2, padding=0, ceil_mode=True)``). On a conv1 map of side n the Caffe pool gives
``ceil((n - 3) / 2) + 1`` cells, torchvision's ``floor((n - 1) / 2) + 1``: the same count when n is even, one
fewer when n is odd, and in every case windows that start at conv1 cell 0 instead of -1, i.e. every stride-4..16
cell sees the image 2 pixels further right and down. The MSRA weights were trained on the Caffe grid.

Module names are torchvision's (`conv1`, `bn1`, `layer1`..`layer4`, `downsample.0/1`, `fc`) so its
checkpoints load as they are; the semantic names (`stem`, `res2`..`res5`) live in `feature_specs`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .layers import freeze
from .spec import DeclaredFeatures, FeatureSpec, check_out_features

STYLES = ("pytorch", "msra")
SHORTCUTS = ("A", "B", "C", "none")
STAGE_NAMES = ("res2", "res3", "res4", "res5")

# name -> (block kind, blocks per stage); Table 1 of the paper.
ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}

NormFn = Callable[[int], nn.Module]


class ZeroPadShortcut(nn.Module):
    """Option A: identity that subsamples by `stride` and zero-pads the extra channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot shrink channels ({in_channels} -> {out_channels})")
        self.pad = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x


def check_shortcut(shortcut: str | None) -> str:
    """``shortcut`` as one of SHORTCUTS (None means "none", the plain net); ValueError otherwise."""
    shortcut = "none" if shortcut is None else shortcut
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}; choose from {list(SHORTCUTS)} (none: a plain net)")
    return shortcut


def _shortcut(in_ch: int, out_ch: int, stride: int, shortcut: str, norm: NormFn) -> nn.Module | None:
    """The block's `downsample` branch, or None for a plain identity (or for no shortcut at all)."""
    shortcut = check_shortcut(shortcut)
    if shortcut == "none":
        return None
    reshapes = stride != 1 or in_ch != out_ch
    if shortcut == "C" or (shortcut == "B" and reshapes):
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))
    if shortcut == "A" and reshapes:
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). `style` has no effect: there is no 1x1 to hold the stride."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, *, stride: int, norm: NormFn, shortcut: str, style: str):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = check_shortcut(shortcut) != "none"
        self.downsample = _shortcut(in_ch, out_ch, stride, shortcut, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:  # in place, as torchvision: no norm's backward reads its output
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152); the stride's place depends on `style`."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, *, stride: int, norm: NormFn, shortcut: str, style: str):
        super().__init__()
        out_ch = planes * self.expansion
        s1, s3 = (stride, 1) if style == "msra" else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, planes, 1, stride=s1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.residual = check_shortcut(shortcut) != "none"
        self.downsample = _shortcut(in_ch, out_ch, stride, shortcut, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:  # in place, as torchvision: no norm's backward reads its output
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(DeclaredFeatures, nn.Module):
    """A ResNet trunk that returns the requested feature maps.

    forward(images[N, 3, H, W]) -> OrderedDict name -> map, with names from `stem` (stride 4, after the
    max-pool), `res2` (4), `res3` (8), `res4` (16), `res5` (32). Stages after the last requested one
    are not built. `width` is the channel count of conv1 and of conv2_x's 3x3 convs (the paper's 64);
    every stage doubles it. Other widths are for small from-scratch models (torchvision weights need 64).
    `feature_specs` declares every returned map; `out_channels` is the channel count of the last one
    (torchvision's FasterRCNN reads it). `caffe_stem_pool`: the MSRA Caffe pool1 (see the module docstring);
    the declared strides are the same either way.
    """

    def __init__(
        self,
        arch: str,
        *,
        norm: NormFn,
        style: str = "pytorch",
        shortcut: str = "B",
        out_features: Sequence[str] = ("res4",),
        width: int = 64,
        caffe_stem_pool: bool = False,
    ):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1 channel, got {width}")
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; choose from {list(ARCHS)}")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
        self.arch, self.style = arch, style
        kind, depths = ARCHS[arch]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        names = ("stem",) + STAGE_NAMES
        self._out_features = check_out_features(out_features, names)
        last = names.index(self._out_features[-1])

        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.caffe_stem_pool = bool(caffe_stem_pool)
        if self.caffe_stem_pool:  # MSRA ResNet-*-deploy.prototxt pool1: kernel 3, stride 2, pad 0, Caffe's ceil
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        specs = {"stem": FeatureSpec(width, 4)}

        channels, stride = width, 4
        self._stages: list[tuple[str, str]] = []  # (semantic name, module name)
        for i, (name, depth) in enumerate(zip(STAGE_NAMES, depths)):
            if i + 1 > last:
                break
            planes = width * 2**i
            first_stride = 1 if i == 0 else 2
            blocks = []
            for b in range(depth):
                blocks.append(
                    block(channels, planes, stride=first_stride if b == 0 else 1, norm=norm,
                          shortcut=shortcut, style=style)
                )
                channels = planes * block.expansion
            stride *= first_stride
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self._stages.append((name, f"layer{i + 1}"))
            specs[name] = FeatureSpec(channels, stride)
        self._all_specs = specs
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. (2015, "Delving deep into rectifiers") init, as the paper trains from it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and res2..res5 (freeze_at >= 2..5), as detectron2 counts."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        if freeze_at >= 1:
            self.conv1 = freeze(self.conv1)
            self.bn1 = freeze(self.bn1)
        for i, (_, module_name) in enumerate(self._stages):
            if freeze_at >= i + 2:
                freeze(getattr(self, module_name))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(x.shape)}")
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        x = self.stem(x)
        if "stem" in self._out_features:
            out["stem"] = x
        for name, module_name in self._stages:
            x = getattr(self, module_name)(x)
            if name in self._out_features:
                out[name] = x
        return out

    def split_c4(self) -> tuple["ResNet", "ResNetC4Head"]:
        """Cut a network built up to res5 into the C4 trunk (up to res4) and the res5 RoI head.

        The head keeps torchvision's name `layer4`, so one checkpoint loaded before the split has
        filled both parts.
        """
        if not self._stages or self._stages[-1][0] != "res5":
            raise ValueError("split_c4 needs a network built up to res5")
        head = ResNetC4Head(self.layer4, self._all_specs["res5"].channels)
        del self.layer4
        self._stages = self._stages[:-1]
        self._out_features = ("res4",)
        return self, head


class ResNetC4Head(nn.Module):
    """The paper's RoI head (Appendix A): the whole conv5 stage, then global average pooling.

    forward(roi_features[R, C4, 14, 14]) -> [R, out_channels]. The first block has stride 2, so 14x14
    RoI features run conv5 at 7x7.
    """

    def __init__(self, layer4: nn.Sequential, out_channels: int):
        super().__init__()
        self.layer4 = layer4
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layer4(x), 1), 1)


class ResNetClassifier(ResNet):
    """The ImageNet classifier form: all four stages, global average pooling and `fc`.

    forward(images[N, 3, 224, 224]) -> logits[N, num_classes]. Its state_dict keys are torchvision's.
    """

    def __init__(self, arch: str, *, num_classes: int = 1000, norm: NormFn, style: str = "pytorch",
                 shortcut: str = "B", width: int = 64, caffe_stem_pool: bool = False):
        super().__init__(arch, norm=norm, style=style, shortcut=shortcut, out_features=("res5",), width=width,
                         caffe_stem_pool=caffe_stem_pool)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = super().forward(x)["res5"]
        return self.fc(torch.flatten(self.avgpool(x), 1))
