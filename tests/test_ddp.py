"""Two gloo processes with one image each give the same gradients as one process with both images.

Real detector (ResNet-18-C4, frozen BN, 64-px images) on a path where the only randomness (RPN/RoI
fg/bg sampling) is replaced by a deterministic first-k rule applied per image, so both runs sample the
same anchors/RoIs and every image contributes exactly batch_size_per_image samples: the 2-image loss is
then exactly the mean of the per-image losses, which is what DDP's gradient averaging computes.
"""
import socket
import subprocess
import sys
from pathlib import Path

import torch

from _engine_helpers import ddp_model_and_batch, write_tiny_config
from detres.tasks.detection import detection_loss

HELPER = Path(__file__).with_name("_engine_helpers.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path):
    cfg = write_tiny_config(tmp_path, model={"backbone": {"norm": "frozen_bn", "freeze_at": 0}},
                            data={"flip_prob": 0.0})  # same pixels in every process
    # the single-process reference also generates the data set before the workers read it
    model, images, targets = ddp_model_and_batch(str(cfg))
    model.train()
    losses = detection_loss(model, (images, targets))
    sum(losses.values()).backward()
    ref = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    out = tmp_path / "ddp_grads.pt"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(HELPER), str(r), "2", str(port), str(cfg), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    got = torch.load(out, weights_only=True)["grads"]

    assert set(got) == set(ref) and len(ref) > 20
    # the comparison is not vacuous: gradients are non-zero in the trunk, the RPN and the box head
    for prefix in ("backbone.", "rpn.", "roi_heads."):
        assert any(n.startswith(prefix) and ref[n].abs().sum() > 0 for n in ref), prefix
    worst = max(float((got[n] - ref[n]).abs().max() / (ref[n].abs().max() + 1e-8)) for n in ref)
    print("worst relative difference", worst)
    assert worst < 1e-3, f"largest relative gradient difference {worst}"
    # and a different batch split (image 0 twice) would NOT match: guards against a trivially equal setup
    model.zero_grad()
    sum(detection_loss(model, ([images[0]] * 2, [targets[0]] * 2)).values()).backward()
    other = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert max(float((other[n] - got[n]).abs().max()) for n in ref) > 1e-4
