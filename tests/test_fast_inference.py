"""The fast inference path: exact transforms, the given model untouched, the same detections as fp32 eager."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

import detres.modeling.roi_algebra as roi_algebra
from _engine_helpers import make_spec, same_detections, write_tiny_config
from detres.backbones.resnet import BasicBlock, Bottleneck
from detres.config import load_config
from detres.modeling import build_detector
from detres.modeling.fast import cpu_has_native_bf16, fold_batchnorm, prepare_for_inference
from detres.modeling.roi_algebra import CommutedC4Block
from detres.tasks.detection import build_model, run_train


def _random_stats(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("norm", [lambda c: FrozenBatchNorm2d(c), lambda c: torch.nn.BatchNorm2d(c)])
@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_batchnorm_folding_is_exact(block, norm):
    b = block(32, 16, stride=2, norm=norm, shortcut="B", style="msra").eval()
    _random_stats(b)
    x = torch.randn(3, 32, 9, 9)
    with torch.no_grad():
        expect = b(x)
        folded = copy.deepcopy(b)
        n = fold_batchnorm(folded)
        got = folded(x)
    assert n == (3 if block is BasicBlock else 4)  # every conv+BN pair, the projection shortcut included
    assert not any(isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)) for m in folded.modules())
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny detector trained for a few iterations, so that its scores separate the detections."""
    tmp = tmp_path_factory.mktemp("fast")
    cfg = load_config(write_tiny_config(tmp), ["solver.max_iter=12", "solver.steps=[]", "test.eval_period=0",
                                              "test.num_vis_images=0", "solver.checkpoint_period=0",
                                              "model.roi.score_thresh=0.05"])
    run_train(cfg, progress=False)
    model = build_model(cfg, weights=None)
    model.load_state_dict(torch.load(tmp / "out" / "model_final.pth", weights_only=True)["model"])
    return model.eval()


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 64, 64, generator=g), torch.rand(3, 96, 80, generator=g)]  # two sizes


@pytest.mark.parametrize("options", [dict(), dict(channels_last=False), dict(roi_chunk=3),
                                     dict(freeze=True, channels_last=False)],
                         ids=["defaults", "fold-only", "chunked", "frozen"])
def test_same_detections_as_eager(trained, options):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    fast = prepare_for_inference(trained, **options)
    with torch.no_grad():
        eager, got = trained(_images()), fast(_images())
    assert sum(len(d["labels"]) for d in eager) > 0
    for e, f in zip(eager, got):
        assert same_detections(e, f), (e, f)
    # the given model is left as it was: same modules, same values, eval/train flag untouched
    assert isinstance(trained.backbone.bn1, (FrozenBatchNorm2d, torch.nn.BatchNorm2d))
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


def test_a_wrong_transform_would_be_caught(trained, monkeypatch):
    """Negative control: a fold that forgets the shift changes the detections, and same_detections sees it."""
    import detres.modeling.fast as fast_mod

    real = fast_mod._bn_scale_shift
    monkeypatch.setattr(fast_mod, "_bn_scale_shift", lambda bn: (real(bn)[0], real(bn)[1] * 0))
    fast = prepare_for_inference(trained)
    with torch.no_grad():
        eager, got = trained(_images()), fast(_images())
    assert not all(same_detections(e, f) for e, f in zip(eager, got))


def test_disabled_and_bf16_policy():
    model = build_detector(make_spec(backbone={"norm": "frozen_bn"}), 3).eval()
    plain = prepare_for_inference(model, enabled=False)
    assert plain is not model and type(plain.backbone) is type(model.backbone)
    fast = prepare_for_inference(model, bf16=True)
    # bf16 only where the CPU computes it natively; otherwise the option is dropped
    assert fast.inference_options["bf16"] == cpu_has_native_bf16()
    with pytest.raises(ValueError, match="roi_chunk"):
        prepare_for_inference(model, roi_chunk=0)


def test_bottleneck_detector_commutes_its_head_with_the_same_detections(monkeypatch):
    """End to end on a bottleneck ResNet (ResNet-50 at width 8, so its head's first block has 1x1 convs and a
    projection shortcut): the fast path really moves that block before RoIAlign and runs it there, and the
    detections are the eager model's."""
    torch.manual_seed(0)
    model = build_detector(make_spec("resnet50", tiny=True, backbone={"width": 8}, roi={"score_thresh": 0.0}),
                           3).eval()
    _random_stats(model)  # frozen BN with non-trivial statistics: folding and the bias order matter
    # The paper's predictor init (std 0.01, 0.001) gives scores ~1/3 and boxes ~the proposals whatever the head
    # computes; scaled to the head's real output, scores and boxes depend on it, so a wrong head shows.
    features = []
    hook = model.roi_heads.box_head.register_forward_hook(lambda m, i, out: features.append(out))
    with torch.no_grad():
        model(_images())
    hook.remove()
    scale = torch.cat(features).std().item() * model.roi_heads.box_predictor.cls_score.in_features ** 0.5
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 2.0 / scale)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.2 / scale)

    fast = prepare_for_inference(model)
    pool = fast.roi_heads.box_roi_pool
    assert isinstance(pool, CommutedC4Block) and isinstance(pool.block, Bottleneck)
    assert isinstance(pool.block.bn1, torch.nn.Identity)  # folded first
    head = fast.roi_heads.box_head
    assert len(head.layer4) == 2  # the head keeps conv5's other two blocks
    calls = []
    forward = CommutedC4Block.forward
    monkeypatch.setattr(CommutedC4Block, "forward", lambda self, *a: calls.append(len(a[1])) or forward(self, *a))
    with torch.no_grad():
        eager, got = model(_images()), fast(_images())
    assert calls == [2]  # one call, for both images
    for e, f in zip(eager, got):
        assert sorted(set(e["labels"].tolist())) == [1, 2]
        assert same_detections(e, f), (e, f)
    # the comparison sees a head that does not commute: the first convs' bias pooled (RoIAlign is not affine)
    monkeypatch.setattr(roi_algebra, "_conv_no_bias", lambda conv, x: F.conv2d(x, conv.weight, conv.bias))
    with torch.no_grad():
        wrong = fast(_images())
    assert not any(same_detections(e, f) for e, f in zip(eager, wrong))
    # a head whose first conv is not 1x1 is not commuted: the fast path keeps RoIAlign then the whole head
    odd = copy.deepcopy(model)
    first = odd.roi_heads.box_head.layer4[0]
    first.conv1 = torch.nn.Conv2d(first.conv1.in_channels, first.conv1.out_channels, 3, padding=1, bias=False)
    assert not isinstance(prepare_for_inference(odd).roi_heads.box_roi_pool, CommutedC4Block)
    # ... nor one whose projection shortcut is not 1x1 (it fell through to CommutedC4Block's ValueError before)
    odd = copy.deepcopy(model)
    conv = odd.roi_heads.box_head.layer4[0].downsample[0]
    odd.roi_heads.box_head.layer4[0].downsample[0] = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3,
                                                                      stride=conv.stride, padding=1, bias=False)
    assert not isinstance(prepare_for_inference(odd).roi_heads.box_roi_pool, CommutedC4Block)
