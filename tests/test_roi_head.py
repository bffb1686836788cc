"""C4RoIHead: the whole RoI head is one module (pooler, per-RoI network, predictor, sampling, losses), keeps
torchvision's state-dict keys, and the fast path's head options are its own computation, not wrapper modules."""
from __future__ import annotations

import torch

from _engine_helpers import make_spec, same_detections
from detres.modeling import C4RoIHead, C4RoIPooler, build_detector, prepare_for_inference


def _model():
    torch.manual_seed(0)
    return build_detector(make_spec("resnet18", tiny=True, roi={"score_thresh": 0.0}), 3).eval()


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 128, generator=g)]


def test_the_head_owns_pooler_network_and_predictor_under_torchvisions_keys():
    model = _model()
    heads = model.roi_heads
    assert isinstance(heads, C4RoIHead) and isinstance(heads.box_roi_pool, C4RoIPooler)
    # checkpoints of earlier versions load: the keys are torchvision's, box_head.* and box_predictor.* only
    keys = {k for k in model.state_dict() if k.startswith("roi_heads.")}
    expect = {f"roi_heads.box_head.{k}" for k in heads.box_head.state_dict()}
    expect |= {f"roi_heads.box_predictor.{k}" for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight",
                                                         "bbox_pred.bias")}
    assert keys == expect
    # the predictor the head makes: 3 classes (background included), Faster R-CNN's init (zero biases)
    assert heads.box_predictor.cls_score.out_features == 3 and heads.box_predictor.bbox_pred.out_features == 12
    assert heads.box_predictor.cls_score.in_features == heads.box_head.out_channels
    assert not heads.box_predictor.cls_score.bias.any() and not heads.box_predictor.bbox_pred.bias.any()
    assert heads.box_predictor.bbox_pred.weight.std() < heads.box_predictor.cls_score.weight.std() / 3


def test_roi_chunk_runs_the_heads_own_network_over_chunks():
    model = _model()
    fast = prepare_for_inference(model, roi_chunk=3, channels_last=False, commute_head=False, freeze=False)
    plain = prepare_for_inference(model, roi_chunk=None, channels_last=False, commute_head=False, freeze=False)
    # the head keeps its own modules: no wrapper around the network or the pooler
    assert type(fast.roi_heads.box_head) is type(model.roi_heads.box_head)
    assert type(fast.roi_heads.box_roi_pool) is C4RoIPooler
    sizes = {}
    for name, m in (("fast", fast), ("plain", plain)):
        sizes[name] = []
        m.roi_heads.box_head.register_forward_hook(lambda mod, i, out, s=sizes[name]: s.append(i[0].shape[0]))
    with torch.no_grad():
        got, expect = fast(_images()), plain(_images())
    total = sum(sizes["plain"])
    assert len(sizes["plain"]) == 1 and total > 3  # negative control: one call over all RoIs
    assert sizes["fast"] == [3] * (total // 3) + ([total % 3] if total % 3 else [])
    assert all(same_detections(a, b) for a, b in zip(got, expect))


def test_pool_threads_split_one_images_rois_with_the_same_features():
    model = _model()
    heads = prepare_for_inference(model, pool_threads=2, channels_last=False, commute_head=False).roi_heads
    assert heads.pool_threads == 2
    calls = []
    heads.box_roi_pool.register_forward_hook(lambda mod, i, out: calls.append(i[1][0].shape[0]))
    feats = {"res4": torch.rand(1, model.backbone.out_channels, 6, 8)}
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 50.0], [10.0, 5.0, 90.0, 60.0], [3.0, 3.0, 20.0, 30.0],
                           [30.0, 20.0, 120.0, 90.0], [50.0, 40.0, 70.0, 80.0]])]
    with torch.no_grad():
        got = heads._pool(feats, boxes, [(96, 128)])
        expect = model.roi_heads.box_roi_pool(feats, boxes, [(96, 128)])
    assert sorted(calls) == [2, 3]  # 5 RoIs over 2 threads
    assert torch.equal(got, expect)
    heads.pool_threads = 1  # negative control: one call
    calls.clear()
    with torch.no_grad():
        heads._pool(feats, boxes, [(96, 128)])
    assert calls == [5]
