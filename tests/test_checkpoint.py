"""Checkpoint files: atomic write, sidecar checksum, RNG round trip, last-checkpoint lookup, schedule."""
import random

import numpy as np
import pytest
import torch

from detres.engine.checkpoint import (CheckpointError, checkpoint_name, find_last_checkpoint, load_checkpoint,
                                      save_checkpoint)
from detres.utils.rng import get_rng_state, set_rng_state
from detres.engine.solver import WarmupMultiStep, build_warmup_multistep, scale_lr


def test_save_load_and_last(tmp_path):
    for it in (5, 10):
        save_checkpoint({"model": {"w": torch.full((3,), float(it))}, "iteration": it},
                        str(tmp_path / checkpoint_name(it)))
    assert find_last_checkpoint(str(tmp_path)).endswith("model_0000010.pth")
    assert load_checkpoint(str(tmp_path / "model_0000005.pth"))["model"]["w"][0] == 5
    (tmp_path / "last_checkpoint").unlink()  # falls back to the highest number
    assert find_last_checkpoint(str(tmp_path)).endswith("model_0000010.pth")
    assert find_last_checkpoint(str(tmp_path / "empty")) is None
    assert not list(tmp_path.glob("*.tmp.*"))


def test_corrupt_files_get_one_line_errors(tmp_path):
    p = tmp_path / "c.pth"
    save_checkpoint({"model": {"w": torch.zeros(1000)}}, str(p))
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle: caught by the checksum
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"c\.pth: sha256 mismatch"):
        load_checkpoint(str(p))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="'model'"):
        load_checkpoint(str(tmp_path / "other.pth"))
    (tmp_path / "last_checkpoint").write_text("gone.pth\n")
    with pytest.raises(CheckpointError, match="gone.pth"):
        find_last_checkpoint(str(tmp_path))


def test_rng_state_round_trip_survives_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"model": {}, "rng": get_rng_state()}, str(tmp_path / "r.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(str(tmp_path / "r.pth"))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_warmup_multistep_schedule():
    f = WarmupMultiStep(steps=[10, 20], gamma=0.1, warmup_iters=5, warmup_factor=0.1, warmup_method="linear")
    assert f(0) == pytest.approx(0.1) and f(5) == 1.0 and f(9) == 1.0
    assert f(10) == pytest.approx(0.1) and f(25) == pytest.approx(0.01)
    assert 0.1 < f(2) < 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = build_warmup_multistep(opt, steps=[2], gamma=0.1, warmup_iters=0, warmup_factor=0.001,
                                   warmup_method="linear")
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.5, 0.05, 0.05])
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStep(steps=[5, 3], gamma=0.1, warmup_iters=0, warmup_factor=0.001, warmup_method="linear")
    assert scale_lr(0.02, total_batch=8, reference_batch=16) == pytest.approx(0.01)
