"""CUDA checks: run only where a GPU is present (``pytest -m cuda``); skipped elsewhere, CI included."""
from __future__ import annotations

import pytest
import torch

from _engine_helpers import make_spec, same_detections
from detres.modeling import C4RoIPooler, build_detector
from detres.modeling.fast import prepare_for_inference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _batch(device):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g).to(device), torch.rand(3, 128, 96, generator=g).to(device)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 60.0, 70.0]], device=device), "labels": torch.tensor([1], device=device)},
               {"boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0]], device=device), "labels": torch.tensor([2], device=device)}]
    return images, targets


def _losses_and_rpn_grads(model, amp, device, *, cpu_bf16=False):
    """One forward + backward of ``model`` on :func:`_batch` under ``amp`` (RNG seeded, so the RPN samples the
    same anchors whatever the precision): the losses, the RPN head's weight gradients (fp32) and the dtype the
    RPN head computed in."""
    from detres.utils.amp import autocast

    images, targets = _batch(device)
    dtypes = []
    hook = model.rpn.head.cls_logits.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    torch.manual_seed(0)
    with autocast(amp, device, cpu_bf16=cpu_bf16):
        losses = model(images, targets)
    hook.remove()
    sum(losses.values()).backward()
    head = model.rpn.head
    return ({k: float(v.detach()) for k, v in losses.items()}, dtypes[0],
            {n: w.grad.float().clone() for n, w in (("cls", head.cls_logits.weight), ("box", head.bbox_pred.weight))})


def test_bf16_amp_training_step_agrees_with_fp32():
    """A bf16 step is the fp32 step up to bf16's rounding: the RPN's losses within 2% (its anchors are matched
    and sampled in fp32, so the same ones are scored), the RoI classifier's within 5% (its proposals may differ
    slightly), the RPN head's gradients within 10% (relative L2; about 1-4% measured with CPU bf16 autocast);
    and the head really computed in bf16. Then two SGD steps stay finite."""
    import copy

    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, backbone={"norm": "bn", "freeze_at": 0}), 3).cuda().train()
    l32, d32, g32 = _losses_and_rpn_grads(copy.deepcopy(model), None, "cuda")
    l16, d16, g16 = _losses_and_rpn_grads(copy.deepcopy(model), "bf16", "cuda")
    assert (d32, d16) == (torch.float32, torch.bfloat16)
    for key, rtol in (("loss_objectness", 0.02), ("loss_rpn_box_reg", 0.02), ("loss_classifier", 0.05)):
        assert l16[key] == pytest.approx(l32[key], rel=rtol), (key, l16[key], l32[key])
    for name in g32:
        err = float((g16[name] - g32[name]).norm() / g32[name].norm())
        assert err < 0.1, (name, err)
    from detres.utils.amp import autocast

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = _batch("cuda")
    for _ in range(2):
        with autocast("bf16", "cuda"):
            losses = model(images, targets)
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cpu_and_cuda_evaluation_agree():
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, roi={"score_thresh": 0.0}), 3).eval()
    images, _ = _batch("cpu")
    with torch.no_grad():
        cpu = model(images)
        gpu = model.cuda()([im.cuda() for im in images])
    for c, g in zip(cpu, gpu):
        n = min(len(c["scores"]), len(g["scores"]), 10)  # the top detections: order may swap on near-ties
        torch.testing.assert_close(g["scores"][:n].cpu(), c["scores"][:n], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(g["boxes"][:n].cpu(), c["boxes"][:n], rtol=1e-3, atol=0.5)


@pytest.mark.parametrize("kind", ["roi_align", "roi_pool"])
def test_roi_pooling_under_autocast(kind):
    pool = C4RoIPooler(kind=kind, feature="res4", stride=16, output_size=7, sampling_ratio=0, aligned=False)
    feats = {"res4": torch.rand(2, 8, 20, 20, device="cuda")}
    rois = [torch.tensor([[0.0, 0.0, 64.0, 64.0]], device="cuda"), torch.tensor([[16.0, 8.0, 200.0, 120.0]], device="cuda")]
    ref = pool(feats, rois)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = pool({"res4": feats["res4"].bfloat16()}, rois)
    assert out.shape == (2, 8, 7, 7) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_fast_path_on_cuda(monkeypatch):
    """The fast path's copy on CUDA gives the eager model's detections: the same labels, boxes within 0.5 px and
    scores within 1e-3, for every detection (score_thresh 0: each proposal gives one per class, so n > 0)."""
    # fp32 against fp32: TF32 convolutions and matmuls would round the folded and unfolded weights differently
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, roi={"score_thresh": 0.0}), 3).eval().cuda()
    fast = prepare_for_inference(model, device="cuda")
    images, _ = _batch("cuda")
    with torch.no_grad():
        eager, got = model(images), fast(images)
    assert len(eager) == len(got) == 2
    for e, f in zip(eager, got):
        assert len(e["labels"]) > 0 and sorted(set(e["labels"].tolist())) == [1, 2]
        assert same_detections(e, f), (e, f)
