"""RoIAlign as matrix products, and the C4 head's first 1x1 convs moved before it (modeling.roi_algebra).

Reference: torchvision.ops.roi_align and the eager head. RoIs include boxes crossing and outside the map,
boxes smaller than a bin, and both sampling rules, because those are where a re-derivation goes wrong.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d, roi_align

from detres.backbones.resnet import Bottleneck
from detres.modeling import build_detector
from detres.modeling.detector import C4RoIPooler
from detres.modeling.fast import fold_batchnorm, prepare_for_inference
from detres.modeling.roi_algebra import CommutedC4Block, roi_align_matrices, separable_roi_align


def _boxes(n: int, size: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """Image-pixel boxes: ordinary, tiny, crossing the border and entirely outside (x1 < x2, y1 < y2)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) - torch.tensor([w * 0.1, h * 0.1])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6]) + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    fixed = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0], [3.0, 4.0, 3.5, 4.2], [-40.0, -30.0, -5.0, -2.0],
                          [w - 8.0, h - 6.0, w + 30.0, h + 25.0]])
    return torch.cat([boxes, fixed])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_separable_roi_align_equals_torchvision(aligned, sampling_ratio):
    scale, out = 1 / 16, 7
    fmap = torch.randn(1, 5, 13, 17)
    boxes = _boxes(40, (13 * 16, 17 * 16))
    expect = roi_align(fmap, [boxes], output_size=out, spatial_scale=scale, sampling_ratio=sampling_ratio,
                       aligned=aligned)
    ay, ax = roi_align_matrices(boxes, spatial_scale=scale, output_size=out, height=13, width=17,
                                sampling_ratio=sampling_ratio, aligned=aligned)
    got = separable_roi_align(fmap[0], ay, ax)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert separable_roi_align(fmap[0], ay[:0], ax[:0]).shape == (0, 5, out, out)


@pytest.mark.parametrize("style", ["pytorch", "msra"])
def test_commuted_block_equals_pooling_then_block(style):
    torch.manual_seed(0)
    block = Bottleneck(32, 16, stride=2, norm=lambda c: FrozenBatchNorm2d(c), shortcut="B", style=style)
    for m in block.modules():  # non-trivial frozen statistics, so that folding and the bias order matter
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
    block.eval()
    pooler = C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=14)
    feats = {"res4": torch.randn(2, 32, 9, 12)}
    proposals = [_boxes(11, (9 * 16, 12 * 16), seed=1), _boxes(6, (9 * 16, 12 * 16), seed=2)]
    with torch.no_grad():
        expect = block(pooler(feats, proposals))
        folded = copy.deepcopy(block)
        assert fold_batchnorm(folded) == 4  # bn1..bn3 and the shortcut's
        got = CommutedC4Block(pooler, folded)(feats, proposals)
    assert got.shape == expect.shape == (25, 64, 7, 7)  # 11 + 6 random RoIs, 4 fixed ones each
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


def test_commuted_block_refuses_what_is_not_linear():
    block = Bottleneck(32, 16, stride=2, norm=lambda c: FrozenBatchNorm2d(c), shortcut="B", style="pytorch").eval()
    fold_batchnorm(block)
    with pytest.raises(ValueError, match="RoIPool"):
        CommutedC4Block(C4RoIPooler(kind="roi_pool", feature="res4", stride=16, output_size=14), block)
    with pytest.raises(ValueError, match="even"):
        CommutedC4Block(C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=7), block)
    unfolded = Bottleneck(32, 16, stride=2, norm=lambda c: FrozenBatchNorm2d(c), shortcut="B", style="pytorch").eval()
    with pytest.raises(ValueError, match="fold"):
        CommutedC4Block(C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=14), unfolded)


@pytest.mark.parametrize("style", ["pytorch", "msra"])
def test_fast_path_commutes_a_resnet50_head_with_the_same_box_features(style):
    """The whole detector: the fast path's pooler + head give the eager head's features for the same RoIs."""
    torch.manual_seed(0)
    model = build_detector(backbone="resnet50", num_classes=3, norm="frozen_bn", style=style, width=8).eval()
    fast = prepare_for_inference(model)
    assert type(fast.roi_heads.box_roi_pool).__name__ == "CommutedC4Block"
    slow = prepare_for_inference(model, commute_head=False)
    assert type(slow.roi_heads.box_roi_pool).__name__ != "CommutedC4Block"
    images = torch.rand(1, 3, 96, 128)
    proposals = [_boxes(30, (96, 128), seed=3).clamp(min=0, max=95)]
    sizes = [(96, 128)]
    with torch.no_grad():
        feats = model.backbone(images)
        expect = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, proposals, sizes))
        got = fast.roi_heads.box_head(fast.roi_heads.box_roi_pool(fast.backbone(images), proposals, sizes))
    torch.testing.assert_close(got, expect, rtol=1e-3, atol=1e-3)
    # the head runs the rest of conv5: two more bottlenecks in ResNet-50
    head = fast.roi_heads.box_head
    assert len(getattr(head, "module", head).blocks) == 2
    # RoIPool and basic-block heads keep the ordinary path
    pooled = build_detector(backbone="resnet50", num_classes=3, norm="frozen_bn", pooler="roi_pool", width=8).eval()
    assert type(prepare_for_inference(pooled).roi_heads.box_roi_pool).__name__ != "CommutedC4Block"
