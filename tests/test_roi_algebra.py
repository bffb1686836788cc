"""RoIAlign as matrix products, and the C4 head's first 1x1 convs moved before it (modeling.roi_algebra).

Reference: torchvision.ops.roi_align and the eager head. RoIs include boxes crossing and outside the map,
boxes smaller than a bin, and both sampling rules, because those are where a re-derivation goes wrong.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, roi_align

import detres.modeling.roi_algebra as roi_algebra
from detres.backbones.resnet import Bottleneck
from _engine_helpers import make_spec
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


def _check_separable_roi_align(aligned: bool, sampling_ratio: int) -> None:
    """separable_roi_align with roi_align_matrices equals torchvision's roi_align (asserts)."""
    scale, out = 1 / 16, 7
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 5, 13, 17, generator=g)
    boxes = _boxes(40, (13 * 16, 17 * 16))
    expect = roi_align(fmap, [boxes], output_size=out, spatial_scale=scale, sampling_ratio=sampling_ratio,
                       aligned=aligned)
    ay, ax = roi_align_matrices(boxes, spatial_scale=scale, output_size=out, height=13, width=17,
                                sampling_ratio=sampling_ratio, aligned=aligned)
    got = separable_roi_align(fmap[0], ay, ax)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert separable_roi_align(fmap[0], ay[:0], ax[:0]).shape == (0, 5, out, out)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_separable_roi_align_equals_torchvision(aligned, sampling_ratio):
    _check_separable_roi_align(aligned, sampling_ratio)


@pytest.mark.parametrize("end", ["first", "last"])
def test_a_wrong_roi_support_is_caught(end, monkeypatch):
    """Negative control: each RoI reading one map row and column too few (its first or its last) fails the
    check above."""
    support = roi_algebra._support

    def one_cell_too_small(m):
        lo, hi = support(m)
        return ([v + 1 for v in lo], hi) if end == "first" else (lo, [v - 1 for v in hi])

    monkeypatch.setattr(roi_algebra, "_support", one_cell_too_small)
    for aligned in (False, True):
        with pytest.raises(AssertionError, match="not close"):
            _check_separable_roi_align(aligned, 0)


def _block_and_rois(style: str):
    """A stride-2 bottleneck with non-trivial frozen statistics (so that folding and the bias order matter),
    a 14x14 RoIAlign pooler, a 2-image map and 11 + 6 random RoIs plus 4 fixed ones per image."""
    torch.manual_seed(0)
    block = Bottleneck(32, 16, stride=2, norm=lambda c: FrozenBatchNorm2d(c), shortcut="B", style=style)
    for m in block.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
    block.eval()
    pooler = C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=14, sampling_ratio=0, aligned=False)
    feats = {"res4": torch.randn(2, 32, 9, 12)}
    proposals = [_boxes(11, (9 * 16, 12 * 16), seed=1), _boxes(6, (9 * 16, 12 * 16), seed=2)]
    return block, pooler, feats, proposals


def _commuted_and_eager(style: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(CommutedC4Block's output, the eager pooler then block's output) for :func:`_block_and_rois`."""
    block, pooler, feats, proposals = _block_and_rois(style)
    with torch.no_grad():
        expect = block(pooler(feats, proposals))
        folded = copy.deepcopy(block)
        assert fold_batchnorm(folded) == 4  # bn1..bn3 and the shortcut's
        got = CommutedC4Block(pooler, folded)(feats, proposals)
    return got, expect


@pytest.mark.parametrize("style", ["pytorch", "msra"])
def test_commuted_block_equals_pooling_then_block(style):
    got, expect = _commuted_and_eager(style)
    assert got.shape == expect.shape == (25, 64, 7, 7)  # 11 + 6 random RoIs, 4 fixed ones each
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrong", ["relu", "bias"])
def test_a_head_that_does_not_commute_gives_a_measurable_error(wrong, monkeypatch):
    """Negative control: a non-linear op (a ReLU) or an affine one (the conv's bias, pooled and then added
    again) before the pooling does not commute with RoIAlign; the outputs then differ by far more than the
    1e-4 the test above allows."""
    def not_linear(conv, x):
        return torch.relu(F.conv2d(x, conv.weight)) if wrong == "relu" else F.conv2d(x, conv.weight, conv.bias)

    monkeypatch.setattr(roi_algebra, "_conv_no_bias", not_linear)
    for style in ("pytorch", "msra"):
        got, expect = _commuted_and_eager(style)
        assert (got - expect).abs().max() > 0.1, style  # the outputs are O(1): 1e3 x the tolerance


def test_commuted_block_refuses_what_is_not_linear():
    block, pooler, _, _ = _block_and_rois("pytorch")
    fold_batchnorm(block)
    with pytest.raises(ValueError, match="RoIPool"):
        CommutedC4Block(C4RoIPooler(kind="roi_pool", feature="res4", stride=16, output_size=14, sampling_ratio=0,
                                    aligned=False), block)
    with pytest.raises(ValueError, match="even"):
        CommutedC4Block(C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=7, sampling_ratio=0,
                                    aligned=False), block)
    unfolded = Bottleneck(32, 16, stride=2, norm=lambda c: FrozenBatchNorm2d(c), shortcut="B", style="pytorch").eval()
    with pytest.raises(ValueError, match="fold"):
        CommutedC4Block(pooler, unfolded)
    # a first conv or a shortcut conv that is not 1x1 mixes neighbouring cells: it does not commute
    for part in ("conv1", "shortcut"):
        wrong = copy.deepcopy(block)
        if part == "conv1":
            wrong.conv1 = nn.Conv2d(32, 16, 3, stride=1, padding=1)
        else:
            wrong.downsample[0] = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        with pytest.raises(ValueError, match="1x1"):
            CommutedC4Block(pooler, wrong)
    no_projection = copy.deepcopy(block)
    no_projection.downsample = None
    with pytest.raises(ValueError, match="projection"):
        CommutedC4Block(pooler, no_projection)


@pytest.mark.parametrize("style", ["pytorch", "msra"])
def test_fast_path_commutes_a_resnet50_head_with_the_same_box_features(style):
    """The whole detector: the fast path's pooler + head give the eager head's features for the same RoIs."""
    torch.manual_seed(0)
    model = build_detector(make_spec("resnet50", backbone={"norm": "frozen_bn", "style": style, "width": 8}), 3).eval()
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
    assert len(head.layer4) == 2
    # RoIPool and basic-block heads keep the ordinary path
    pooled = build_detector(make_spec("resnet50", backbone={"norm": "frozen_bn", "width": 8},
                                      pooler={"type": "roi_pool"}), 3).eval()
    assert type(prepare_for_inference(pooled).roi_heads.box_roi_pool).__name__ != "CommutedC4Block"
