"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for the CPU fast path.

A 3x3, stride-1 convolution computes each 4x4 output tile from a 6x6 input tile. Lavin and Gray ("Fast
Algorithms for Convolutional Neural Networks", 2016) write it as ``Y = A^T [(G g G^T) * (B^T d B)] A``: the
filter and the tile are transformed once, multiplied element-wise in a 6x6 domain, summed over input
channels, and transformed back. Summing over channels turns the 36 element-wise products into 36 matrix
products ``[tiles, C] @ [C, K]``, with 36/16 = 2.25 multiply-adds per output where the direct convolution has
9: 4x fewer in principle. Here the transforms are written as Kronecker-product GEMMs and the 36 products as
one batched matrix product, all in fp32.

oneDNN's CPU convolutions use no Winograd on AVX2 machines, so this is where it pays: measured on both CPU
kinds here (see the README's Performance section), the convolutions of ResNet's conv3/conv4 stages and of the
C4 head run 1.4-2.4x faster; on large maps with few channels the transforms cost more than they save, so
:class:`WinogradConv2d` keeps the ordinary convolution there (a rule on the input's shape, fixed, so the
same input always takes the same path). Not bit-exact: F(4x4, 3x3) in fp32 differs from the direct sum by
about 1e-5 of the output's scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WinogradConv2d", "winograd_weight", "winograd_conv3x3", "use_winograd", "replace_convs"]

_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                   dtype=torch.float64)

#: The shapes where the transform pays (measured, see the module docstring): at least this many input
#: channels and at most this many positions per map.
MIN_CHANNELS, MAX_POSITIONS = 128, 12_000


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` of a conv weight [K, C, 3, 3], as ``[36, C, K]`` (computed in float64, stored in fp32)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"expected a 3x3 conv weight [K, C, 3, 3], got {tuple(weight.shape)}")
    g = _G.to(weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=1, padding=1)`` for ``u = winograd_weight(weight)``.

    x: [N, C, H, W] fp32 (any memory format). Returns [N, K, H, W] with channels-last strides.
    """
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = -(-h // 4), -(-w // 4)  # output tiles of 4x4
    kb = torch.kron(_BT, _BT).to(x.device, torch.float32)  # [36, 36]: B^T d B on a flattened 6x6 tile
    ka = torch.kron(_AT, _AT).to(x.device, torch.float32)  # [16, 36]: A^T m A
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))  # [N, 4th+2, 4tw+2, C]
    tiles = xp.unfold(1, 6, 4).unfold(2, 6, 4)  # [N, th, tw, C, 6, 6], a view
    p = n * th * tw
    d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(36, p * c)
    v = (kb @ d).view(36, p, c)
    m = torch.bmm(v, u)  # [36, P, K]: the 36 products, summed over channels
    y = (ka @ m.view(36, p * k)).view(4, 4, n, th, tw, k)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, 4 * th, 4 * tw, k)[:, :h, :w]
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


def use_winograd(conv: nn.Conv2d) -> bool:
    """True for the convolutions F(4x4, 3x3) computes: 3x3, stride 1, padding 1, no dilation or groups,
    zero padding, enough input channels."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= MIN_CHANNELS)


class WinogradConv2d(nn.Module):
    """Stands in for a 3x3 conv (:func:`use_winograd`) at inference: F(4x4, 3x3) on fp32 maps of at most
    :data:`MAX_POSITIONS` positions, the original convolution otherwise (larger maps, other dtypes, autocast).
    The weight is transformed once, at construction; later changes to ``conv`` are not seen."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not use_winograd(conv):
            raise ValueError(f"not a 3x3 stride-1 conv with >= {MIN_CHANNELS} input channels: {conv}")
        self.conv = conv
        self.register_buffer("u", winograd_weight(conv.weight), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype != torch.float32 or x.shape[2] * x.shape[3] > MAX_POSITIONS or torch.is_grad_enabled()
                or torch.is_autocast_enabled(x.device.type)):
            return self.conv(x)
        return winograd_conv3x3(x, self.u, self.conv.bias)


def replace_convs(module: nn.Module) -> int:
    """Swap every qualifying 3x3 conv inside ``module`` for a :class:`WinogradConv2d`, in place; returns
    the number swapped."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if use_winograd(child):
                setattr(parent, name, WinogradConv2d(child))
                swapped += 1
    return swapped
