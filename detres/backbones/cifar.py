"""The CIFAR-10 networks of He et al. (2015), Sec. 4.2: ResNet-20/32/44/56/110/1202 and their plain nets.

A 3x3 conv of 16 filters on the 32x32 input, then three stages of ``n`` basic blocks (2n 3x3 convs each) on
32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters, subsampling by the first conv of a stage (stride 2),
global average pooling and a 10-way fc: 6n + 2 weighted layers. Every conv is followed by BN. The residual
nets use option A everywhere (identity shortcuts; zero-padding and subsampling where the shape changes),
so they have exactly the parameters of their plain counterparts. He initialisation.

Built through :func:`detres.backbones.build_classifier` (``"cifar_resnet20"``, ``"cifar_plain56"``, ...).
Parameter counts are the paper's Table 6 (0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M).
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import BasicBlock, NormFn

__all__ = ["CIFAR_DEPTHS", "CifarResNet", "cifar_spec"]

#: name -> (depth 6n + 2, residual?)
CIFAR_DEPTHS: dict[str, tuple[int, bool]] = {
    **{f"cifar_resnet{d}": (d, True) for d in (20, 32, 44, 56, 110, 1202)},
    **{f"cifar_plain{d}": (d, False) for d in (20, 32, 44, 56)},
}


def cifar_spec(name: str) -> tuple[int, bool]:
    """(blocks per stage n, residual?) of a CIFAR net name."""
    depth, residual = CIFAR_DEPTHS[name]
    if (depth - 2) % 6:
        raise ValueError(f"{name}: depth {depth} is not 6n + 2")
    return (depth - 2) // 6, residual


class CifarResNet(nn.Module):
    """forward(images [N, 3, 32, 32]) -> logits [N, num_classes]. Module names: ``conv1``, ``bn1``,
    ``layer1``..``layer3`` (stages of :class:`~detres.backbones.resnet.BasicBlock`), ``fc``."""

    def __init__(self, n: int, *, residual: bool = True, num_classes: int = 10, norm: NormFn | None = None,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if n < 1:
            raise ValueError(f"blocks per stage must be >= 1, got {n}")
        norm = norm or (lambda c: nn.BatchNorm2d(c))
        shortcut = "A" if residual else "none"
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(channels if b == 0 else width, width, stride=2 if (i > 0 and b == 0) else 1,
                                 norm=norm, shortcut=shortcut, style="pytorch") for b in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():  # He et al. 2015 ("Delving deep"), as the paper
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(x.shape)}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
