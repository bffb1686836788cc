"""The reference implementation's training choices, each proved to change what training does:
allowed_border, the RPN's minimum size at the original scale, the background IoU range, bias learning
rate and decay, gradient accumulation (iter_size) and the automatic warmup."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from _engine_helpers import FirstKSampler, make_spec, write_tiny_config
from detres.config import load_config
from detres.engine.solver import build_sgd
from detres.engine.trainer import Trainer
from detres.evaluation.inference import predict_original
from detres.modeling import build_detector
from detres.tasks.common import build_solver, scaled_lr, warmup_iters
from detres.tasks.detection import build_model, detection_loss


def _batch():
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])}]
    return images, targets


def _rpn_samples(model):
    """Train one forward pass; return per image the anchors the RPN sampled (positive or negative)."""
    rec = {}
    gen, sampler = model.rpn.anchor_generator, model.rpn.fg_bg_sampler
    gen_forward = gen.forward

    def record_anchors(*args, **kwargs):
        rec["anchors"] = gen_forward(*args, **kwargs)
        return rec["anchors"]

    def record_samples(labels):
        pos, neg = sampler(labels)
        rec["sampled"] = [(p | n).bool() for p, n in zip(pos, neg)]
        return pos, neg

    gen.forward, model.rpn.fg_bg_sampler = record_anchors, record_samples
    images, targets = _batch()
    model.train()(images, targets)
    return [a[m] for a, m in zip(rec["anchors"], rec["sampled"])], [im.shape[-2:] for im in images]


def _outside(anchors, hw):
    h, w = hw
    return (anchors[:, 0] < 0) | (anchors[:, 1] < 0) | (anchors[:, 2] > w) | (anchors[:, 3] > h)


def test_allowed_border_zero_samples_no_cross_boundary_anchor():
    torch.manual_seed(0)
    sampled, sizes = _rpn_samples(build_detector(make_spec(tiny=True, rpn={"allowed_border": 0}), 3))
    assert all(len(a) > 0 and not _outside(a, hw).any() for a, hw in zip(sampled, sizes))
    torch.manual_seed(0)  # torchvision's choice (keep all anchors) does sample anchors across the border
    sampled, sizes = _rpn_samples(build_detector(make_spec(tiny=True, rpn={"allowed_border": -1}), 3))
    assert any(_outside(a, hw).any() for a, hw in zip(sampled, sizes))


def _roi_samples(model):
    rec = {}
    select = model.roi_heads.select_training_samples

    def record(proposals, targets):
        out = select(proposals, targets)
        rec["proposals"], rec["labels"], rec["targets"] = out[0], out[2], targets
        return out

    model.roi_heads.select_training_samples = record
    model.train()(*_batch())
    return rec


@pytest.mark.parametrize("lo", [0.1, 0.3])
def test_background_rois_have_iou_at_least_lo(lo):
    torch.manual_seed(0)
    rec = _roi_samples(build_detector(make_spec(tiny=True, roi={"bg_iou_thresh_lo": lo}), 3))
    n_bg = 0
    for props, labels, t in zip(rec["proposals"], rec["labels"], rec["targets"]):
        best = box_iou(t["boxes"], props).max(dim=0).values
        assert (best[labels == 0] >= lo).all() and (best[labels == 0] < 0.5).all()
        assert (best[labels > 0] >= 0.5).all()
        n_bg += int((labels == 0).sum())
    assert n_bg > 0
    torch.manual_seed(0)  # with lo = 0 (torchvision) far-away proposals are sampled as background
    rec = _roi_samples(build_detector(make_spec(tiny=True, roi={"bg_iou_thresh_lo": 0.0}), 3))
    assert any((box_iou(t["boxes"], p).max(dim=0).values[lab == 0] < lo).any()
               for p, lab, t in zip(rec["proposals"], rec["labels"], rec["targets"]))


def test_background_range_is_validated():
    with pytest.raises(ValueError, match=r"roi.bg_iou_thresh_lo: must be in \[0, 0.5\], got 0.6"):
        make_spec(roi={"bg_iou_thresh_lo": 0.6})


def _proposals(model, images, original_sizes=None):
    model.eval()
    with torch.no_grad():
        image_list, _ = model.transform(images, None)
        features = model.backbone(image_list.tensors)
        return model.rpn(image_list, features, original_image_sizes=original_sizes)[0]


def test_rpn_min_size_is_taken_at_the_original_scale_per_image():
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    originals = [(32, 40), (72, 64)]  # image 0 was enlarged 2x by the data pipeline, image 1 not at all
    model = build_detector(make_spec(tiny=True, rpn={"min_size": 12}), 3)
    props = _proposals(model, images, originals)

    def sides(b):
        return torch.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])

    assert len(props[0]) > 0 and sides(props[0]).min() >= 24 - 1e-4  # 12 px at half the input's scale
    assert len(props[1]) > 0 and sides(props[1]).min() >= 12 - 1e-4
    model.rpn.min_size_original = 0.0  # without the minimum, smaller proposals do come out
    props = _proposals(model, images, originals)
    assert (sides(props[0]) < 24).any()


def _recorded_min_sizes(model):
    seen = []
    filter_proposals = model.rpn.filter_proposals

    def record(*args, min_sizes=None):
        seen.append([float(m) for m in min_sizes])
        return filter_proposals(*args, min_sizes=min_sizes)

    model.rpn.filter_proposals = record
    return seen


def test_predict_original_gives_the_rpn_each_images_scale():
    model = build_detector(make_spec(tiny=True, rpn={"min_size": 16}), 3).eval()
    seen = _recorded_min_sizes(model)
    target = {"size": torch.tensor([64, 80]), "orig_size": torch.tensor([128, 160]), "flipped": False}
    predict_original(model, [torch.rand(3, 64, 80)], [target])
    assert seen == [[8.0]]  # 16 px of the original image at half its size
    predict_original(model, [torch.rand(3, 64, 80)], [{"orig_size": torch.tensor([40, 50])}])
    assert seen[1] == [pytest.approx(25.6)]  # enlarged 1.6x (a 500 x 375 VOC image at 600): 25.6 px, not 16


def test_predict_original_flips_a_flipped_inputs_boxes_back():
    """A detector's boxes (already in the photo's pixels) of a horizontally flipped input: x -> W0 - x."""
    class Known(torch.nn.Module):
        def forward(self, images, targets=None, original_sizes=None):
            assert [tuple(int(v) for v in s) for s in original_sizes] == [(40, 100)]
            return [{"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "labels": torch.tensor([1]),
                     "scores": torch.tensor([0.5])}]

    image = torch.rand(3, 20, 50)
    flipped = predict_original(Known(), [image], [{"orig_size": torch.tensor([40, 100]), "flipped": True}])[0]
    assert flipped["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0]]
    plain = predict_original(Known(), [image], [{"orig_size": torch.tensor([40, 100]), "flipped": False}])[0]
    assert plain["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0]]


def test_training_takes_the_scale_from_the_data_pipelines_targets():
    """In training the original size is each target's ``orig_size`` (the data pipeline's field)."""
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, rpn={"min_size": 16}), 3).train()
    seen = _recorded_min_sizes(model)
    images, targets = _batch()
    targets = [dict(t, orig_size=torch.tensor(o)) for t, o in zip(targets, [(32, 40), (144, 128)])]
    model(images, targets)
    assert seen == [[pytest.approx(32.0), pytest.approx(8.0)]]  # 2x enlarged, then 2x reduced


def test_rpn_keeps_no_state_between_calls():
    """The RPN reads each image's scale and size from the call and changes nothing on itself: the same
    images give the same proposals before and after a call at another scale."""
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, rpn={"min_size": 16}), 3).eval()
    images = [torch.rand(3, 64, 80)]
    before = {k: v for k, v in vars(model.rpn).items() if not k.startswith("_")}
    first = _proposals(model, images)
    scaled = _proposals(model, images, [(128, 160)])
    assert {k: v for k, v in vars(model.rpn).items() if not k.startswith("_")} == before
    assert not hasattr(model.rpn, "_scales") and not hasattr(model.rpn, "_image_sizes")
    again = _proposals(model, images)
    assert torch.equal(first[0], again[0])
    assert model.rpn.min_size == 1e-3  # torchvision's own threshold, untouched (the old code overwrote it)
    assert len(scaled[0]) > 0


def test_config_keys_reach_the_detector(tmp_path):
    """Each new key, set in a config, changes the module that uses it."""
    cfg = load_config(write_tiny_config(tmp_path), [
        "model.rpn.allowed_border=0", "model.rpn.min_size=16", "model.rpn.nms_thresh=0.6",
        "model.rpn.positive_fraction=0.4", "model.roi.fg_iou_thresh=0.6", "model.roi.bg_iou_thresh_hi=0.45",
        "model.roi.bg_iou_thresh_lo=0.1", "model.roi.positive_fraction=0.3"])
    m = build_model(cfg)
    assert m.rpn.allowed_border == 0 and m.rpn.min_size_original == 16 and m.rpn.nms_thresh == 0.6
    assert m.rpn.fg_bg_sampler.positive_fraction == 0.4 and m.roi_heads.fg_bg_sampler.positive_fraction == 0.3
    assert m.roi_heads.proposal_matcher.high_threshold == 0.6 and m.roi_heads.proposal_matcher.low_threshold == 0.45
    assert m.roi_heads.bg_iou_thresh_lo == 0.1


def test_bias_lr_factor_and_weight_decay_bias(tmp_path):
    layer = nn.Linear(3, 2)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = build_sgd(layer, lr=0.1, momentum=0.0, weight_decay=0.01, bias_lr_factor=2.0, weight_decay_bias=0.0,
                    momentum_style="pytorch")
    layer.weight.grad, layer.bias.grad = torch.ones_like(w0), torch.ones_like(b0)
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.1 * (1 + 0.01 * w0))
    torch.testing.assert_close(layer.bias.detach(), b0 - 0.2 * 1.0)  # twice the rate, no decay
    # from a config, through the scheduler (which scales each group's own rate)
    cfg = load_config(write_tiny_config(tmp_path), ["solver.bias_lr_factor=2", "solver.weight_decay_bias=0",
                                                    "solver.warmup_iters=0"])
    opt, sched = build_solver(cfg, build_model(cfg))
    lr, _ = scaled_lr(cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, 2 * lr])
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([cfg.solver.weight_decay, 0.0])


def _one_step_params(cfg_path, *, iter_size, images_per_batch):
    """Parameters after one SGD step on the same two images: iter_size x batches of images_per_batch."""
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.rpn.fg_bg_sampler = FirstKSampler(cfg.model.rpn.batch_size_per_image, 0.5)  # deterministic sampling
    model.roi_heads.fg_bg_sampler = FirstKSampler(cfg.model.roi.batch_size_per_image, 0.25)
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])}]
    batches = [(images[i:i + images_per_batch], targets[i:i + images_per_batch]) for i in range(0, 2, images_per_batch)]
    opt = build_sgd(model, lr=0.01, momentum=0.0, weight_decay=0.0, bias_lr_factor=1.0, weight_decay_bias=None,
                    momentum_style="pytorch")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    trainer = Trainer(model=model, loss_fn=detection_loss, optimizer=opt, scheduler=sched,
                      loader_factory=lambda start: iter(batches[start:]), max_iter=1, iter_size=iter_size)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}, trainer


def test_iter_size_two_equals_one_batch_of_two(tmp_path):
    path = write_tiny_config(tmp_path, model={"backbone": {"norm": "frozen_bn", "freeze_at": 2},
                                              "rpn": {"batch_size_per_image": 32}, "roi": {"batch_size_per_image": 16}})
    accumulated, trainer = _one_step_params(path, iter_size=2, images_per_batch=1)
    batched, _ = _one_step_params(path, iter_size=1, images_per_batch=2)
    assert trainer.step_images == 2
    for k in batched:
        torch.testing.assert_close(accumulated[k], batched[k], rtol=1e-4, atol=1e-6, msg=k)
    # a single image's step is a different update, so the comparison above is not vacuous
    cfg = load_config(path)
    torch.manual_seed(0)
    start = {k: v.detach().clone() for k, v in build_model(cfg).named_parameters()}
    moved = [k for k in batched if not torch.equal(batched[k], start[k])]
    assert moved


def test_automatic_warmup_only_when_scaling_raises_the_rate(tmp_path, caplog):
    cfg = load_config(write_tiny_config(tmp_path), ["solver.warmup_iters=null", "solver.max_iter=50000",
                                                    "solver.base_lr=0.001"])
    with caplog.at_level(logging.INFO, logger="detres"):
        assert warmup_iters(cfg, 0.008) == 1000
    assert "warming up" in caplog.text
    assert warmup_iters(cfg, 0.001) == 0  # no scaling up: the paper's single-GPU setting, no warmup
    cfg.solver.max_iter = 200
    assert warmup_iters(cfg, 0.008) == 20  # at most a tenth of a short run
    cfg.solver.warmup_iters = 0
    assert warmup_iters(cfg, 0.008) == 0  # set explicitly: respected
