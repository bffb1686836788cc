"""RoIAlign as two matrix products, and the first 1x1 convolutions of the C4 head moved before it.

torchvision's RoIAlign averages bilinear samples on a regular grid inside each bin. The bilinear weight of a
sample is a product of a weight along y and one along x, the sample grid is a product of a y grid and an x
grid, and a sample outside the map (``y < -1``, ``y > H``, likewise x) is zero in either coordinate. So for one
RoI

    out[c, p, q] = sum_y sum_x Ay[p, y] * F[c, y, x] * Ax[q, x]

with ``Ay`` (``P x H``) and ``Ax`` (``P x W``) the bins' averaged interpolation weights. :func:`roi_align_matrices`
builds them with torchvision's sampling rules (adaptive or fixed sampling ratio, ``aligned`` or not) and
:func:`separable_roi_align` applies them as two matrix products per RoI, over the part of the map the RoI
touches: exact up to float rounding.

Linear maps commute with it. A 1x1 convolution ``W x + b`` applied to RoIAlign's output equals RoIAlign of
``W F`` (no bias: RoIAlign is linear, not affine) plus ``b``; with stride 2 on a 14x14 output it keeps the
even bins, i.e. the even rows of ``Ay`` and ``Ax``. The C4 head's first block starts with two such convolutions (conv1
of a bottleneck, 1024 -> 256/512 channels, and the projection shortcut, 1024 -> 2048 channels, stride 2), so
:class:`CommutedC4Block` runs them once on the shared stride-16 map instead of once per RoI, pools their
outputs, and continues the block as usual. With 300 RoIs of 14x14 that removes about 55 of ResNet-50's
~300 GMACs per image, and the pooling itself becomes matrix products. Only RoIAlign qualifies (RoIPool takes
maxima, which are not linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["roi_align_matrices", "separable_roi_align", "CommutedC4Block"]


def _axis_matrix(start: torch.Tensor, length: torch.Tensor, grid: torch.Tensor, bins: int, size: int) -> torch.Tensor:
    """[R, bins, size]: per RoI, bin -> averaged bilinear weights along one axis (torchvision's rules)."""
    r = start.shape[0]
    gmax = int(grid.max().item()) if r else 1
    bin_len = length / bins
    p = torch.arange(bins, device=start.device, dtype=start.dtype)
    i = torch.arange(gmax, device=start.device, dtype=start.dtype)
    pos = (start[:, None, None] + p[None, :, None] * bin_len[:, None, None]
           + (i[None, None, :] + 0.5) * bin_len[:, None, None] / grid[:, None, None])  # [R, bins, G]
    used = i[None, None, :] < grid[:, None, None]
    inside = (pos >= -1.0) & (pos <= size) & used
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(pos.dtype))
    w_low, w_high = (1 - frac) * inside, frac * inside
    m = torch.zeros(r, bins, size, device=start.device, dtype=start.dtype)
    m.scatter_add_(2, low.reshape(r, bins, -1), w_low.reshape(r, bins, -1))
    m.scatter_add_(2, high.reshape(r, bins, -1), w_high.reshape(r, bins, -1))
    return m / grid[:, None, None]


def roi_align_matrices(rois: torch.Tensor, *, spatial_scale: float, output_size: int, height: int, width: int,
                       sampling_ratio: int = 0, aligned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Ay [R, P, height], Ax [R, P, width])`` for boxes ``rois`` [R, 4] (x1, y1, x2, y2, image pixels), so
    that ``torchvision.ops.roi_align`` of a map F equals ``Ay @ F @ Ax^T`` per RoI and channel."""
    rois = rois.float()
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 0] * spatial_scale - offset, rois[:, 1] * spatial_scale - offset
    w = rois[:, 2] * spatial_scale - offset - x1
    h = rois[:, 3] * spatial_scale - offset - y1
    if not aligned:
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    if sampling_ratio > 0:
        gy = gx = torch.full_like(h, float(sampling_ratio))
    else:
        gy, gx = torch.ceil(h / output_size).clamp(min=1), torch.ceil(w / output_size).clamp(min=1)
    return (_axis_matrix(y1, h, gy, output_size, height), _axis_matrix(x1, w, gx, output_size, width))


def _support(m: torch.Tensor) -> tuple[list[int], list[int]]:
    """Per RoI, the [lo, hi) range of map rows (or columns) with a non-zero weight in ``m`` [R, P, size]."""
    used = (m != 0).any(1)  # [R, size]
    size = used.shape[1]
    idx = torch.arange(size, device=m.device)
    lo = torch.where(used, idx, size).amin(1)
    hi = torch.where(used, idx + 1, 0).amax(1)
    return lo.tolist(), hi.tolist()


def separable_roi_align(feature: torch.Tensor, ay: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
    """RoIAlign of one image's map ``feature`` [C, H, W] with the matrices of :func:`roi_align_matrices`:
    ``[R, C, P, Q]`` (channels-last strides, as the convolutions after it want them).

    Each RoI reads only the rows and columns its weights touch (a RoI covers a small part of the map), so
    the cost is two small matrix products per RoI: ``Ax`` over the crop's columns, then ``Ay`` over its rows.
    """
    c = feature.shape[0]
    r, p, q = ay.shape[0], ay.shape[1], ax.shape[1]
    hwc = feature.permute(1, 2, 0)  # [H, W, C]: a view, contiguous when the map is channels-last
    ay, ax = ay.to(feature.dtype), ax.to(feature.dtype)
    out = feature.new_empty(r, p, q, c)
    (y0, y1), (x0, x1) = _support(ay), _support(ax)
    for i in range(r):
        if y1[i] <= y0[i] or x1[i] <= x0[i]:
            out[i] = 0  # entirely outside the map: RoIAlign gives zeros
            continue
        crop = hwc[y0[i]:y1[i], x0[i]:x1[i]]  # [h, w, C]
        u = torch.matmul(ax[i, :, x0[i]:x1[i]], crop)  # [h, Q, C]
        torch.mm(ay[i, :, y0[i]:y1[i]], u.reshape(u.shape[0], q * c), out=out[i].view(p, q * c))
    return out.permute(0, 3, 1, 2)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat, without the copy when there is one image."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _conv_no_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv's linear part at stride 1 (its stride is applied to the bins instead)."""
    return F.conv2d(x, conv.weight)


class CommutedC4Block(nn.Module):
    """RoIAlign + the C4 head's first bottleneck, with conv1 and the projection shortcut run on the map.

    Stands in for the RoI pooler: ``forward(features, proposals, image_shapes) -> [R, C5, P/2, P/2]``, the
    first block's output; the head then runs the remaining blocks. Needs a bottleneck whose conv1 and
    shortcut are 1x1 convs with their BN folded (:func:`detres.modeling.fast.fold_batchnorm`), strides 1 or 2,
    and an even RoI size.
    """

    def __init__(self, pooler: nn.Module, block: nn.Module):
        super().__init__()
        if getattr(pooler, "kind", None) != "roi_align":
            raise ValueError("only RoIAlign is linear; RoIPool cannot be commuted")
        conv1, ds = block.conv1, block.downsample
        if conv1.kernel_size != (1, 1) or not isinstance(ds, nn.Sequential) or ds[0].kernel_size != (1, 1):
            raise ValueError("the first block must start with 1x1 convs (a bottleneck with a projection shortcut)")
        if pooler.output_size % 2:
            raise ValueError(f"RoI size {pooler.output_size} must be even for the stride-2 shortcut")
        if not all(isinstance(m, nn.Identity) for m in (block.bn1, ds[1])):
            raise ValueError("fold the BatchNorms into the convs first")
        self.pooler, self.block = pooler, block

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        pooler, b = self.pooler, self.block
        fmap = features[pooler.feature]
        _, _, h, w = fmap.shape
        s1, sd = b.conv1.stride[0], b.downsample[0].stride[0]
        main, short = [], []
        for i, boxes in enumerate(proposals):
            ay, ax = roi_align_matrices(boxes, spatial_scale=pooler.spatial_scale, output_size=pooler.output_size,
                                        height=h, width=w, sampling_ratio=pooler.sampling_ratio,
                                        aligned=pooler.aligned)
            f = fmap[i:i + 1]
            for conv, stride, out in ((b.conv1, s1, main), (b.downsample[0], sd, short)):
                ry, rx = ay[:, ::stride], ax[:, ::stride]
                pooled = separable_roi_align(_conv_no_bias(conv, f)[0], ry, rx)  # = W RoIAlign(F), exactly
                if conv.bias is not None:  # the conv adds its bias after the pooling, as in the original head
                    pooled += conv.bias[None, :, None, None].to(pooled.dtype)
                out.append(pooled)
        x = torch.relu_(_cat(main))  # = relu(bn1(conv1(RoIAlign(F))))
        if b.conv2.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = b.relu(b.bn2(b.conv2(x)))
        x = b.bn3(b.conv3(x))
        x += _cat(short)
        return b.relu(x)
