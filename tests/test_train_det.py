"""tools/train_det.py end to end on tiny synthetic data: every artefact, LR scaling, non-finite loss."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _engine_helpers import write_tiny_config
from detres.config import load_config
from detres.tasks.common import scaled_lr
from detres.tasks.detection import detection_loss, run_eval, run_train
from detres.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_four_iterations_write_every_artefact(tmp_path):
    cfg_path = write_tiny_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_det.py"), str(cfg_path), "solver.max_iter=4",
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    # config.yaml loads back to the same config the run used
    assert load_config(out / "config.yaml") == load_config(cfg_path)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3, 4]
    for r_ in train_rows:
        assert {"lr", "images_per_s", "eta_s", "loss_classifier", "loss_objectness"} <= set(r_)
        assert math.isfinite(r_["total_loss"])
    assert any("eval/mAP_11point" in r_ for r_ in rows)  # periodic eval (eval_period=2) logged
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "model_0000002.pth").is_file() and (out / "model_final.pth").is_file()
    final = load_checkpoint(str(out / "model_final.pth"))
    assert final["iteration"] == 4 and {"model", "meta", "optimizer", "scheduler", "scaler", "rng",
                                        "config"} <= set(final)
    assert final["meta"]["mean"]  # usable as weights= (read_weights takes model + meta)
    ev = json.loads((out / "eval.json").read_text())
    assert {"mAP_11point", "mAP_area", "AP_11point", "AP_area"} <= set(ev)
    # eval.json is the final model's score: evaluating model_final.pth again gives the same APs
    again = run_eval(load_config(out / "config.yaml"), str(out / "model_final.pth"), device="cpu", num_workers=0,
                     output_dir=str(tmp_path / "again"))
    assert again["AP_11point"] == pytest.approx(ev["AP_11point"], abs=1e-6)
    assert again["mAP_area"] == pytest.approx(ev["mAP_area"], abs=1e-6)
    # ... from the same detections (written as comp4 files by both evaluations), and there are some
    files = sorted((out / "results").glob("comp4_det_test_*.txt"))
    assert files and [f.name for f in files] == sorted(f.name for f in (tmp_path / "again").glob("*.txt"))

    def rows(path):  # comp4 lines: image id, score, x1, y1, x2, y2
        return [(ln.split()[0], [float(v) for v in ln.split()[1:]]) for ln in path.read_text().splitlines()]

    total = 0
    for f in files:
        first, second = rows(f), rows(tmp_path / "again" / f.name)
        assert [i for i, _ in first] == [i for i, _ in second], f.name
        for (_, a), (_, b) in zip(first, second):
            assert a == pytest.approx(b, abs=1e-4), f.name
        total += len(first)
    assert total > 0
    pngs = list((out / "vis").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp.*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("base_lr, ims, iter_size, reference, world, total, lr", [
    (0.02, 2, 1, 16, 8, 16, 0.02),  # the reference batch: the base rate
    (0.02, 2, 1, 16, 1, 2, 0.0025),  # 1/8 of it: 1/8 of the rate
    (0.01, 1, 2, 1, 4, 8, 0.08),  # gradient accumulation counts: 4 processes x 1 image x 2 steps
])
def test_lr_linear_scaling_rule(tmp_path, base_lr, ims, iter_size, reference, world, total, lr):
    """The rate scales with processes x ims_per_batch x iter_size / reference_batch (the one copy of this test)."""
    cfg = load_config(write_tiny_config(tmp_path), [
        f"solver.base_lr={base_lr}", f"solver.ims_per_batch={ims}", f"solver.iter_size={iter_size}",
        f"solver.reference_batch={reference}"])
    assert scaled_lr(cfg, world_size=world) == (pytest.approx(lr, rel=1e-12), total)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = load_config(write_tiny_config(tmp_path), ["solver.max_iter=6", "test.eval_period=0",
                                                    "test.num_vis_images=0"])
    calls = {"n": 0}

    def bad_loss(model, batch):
        losses = detection_loss(model, batch)
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th iteration (index 3) goes non-finite
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses

    out = tmp_path / "out"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 3.*model_0000002\.pth"):
        run_train(cfg, loss_fn=bad_loss, progress=False)
    good = load_checkpoint(str(out / "model_0000002.pth"))
    assert good["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    assert not (out / "model_final.pth").exists() and not (out / "model_0000004.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.pth"
