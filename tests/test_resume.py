"""Kill-and-resume gives the same weights as an uninterrupted run; cut checkpoints are refused."""
import pytest
import torch

from _engine_helpers import write_tiny_config
from detres.config import load_config
from detres.tasks.detection import detection_loss, run_train
from detres.engine.checkpoint import CheckpointError, find_last_checkpoint, load_checkpoint


class Killed(Exception):
    pass


def _cfg(tmp_path, name):
    # flips on: the data order AND the augmentation must be reproduced by the resumed run
    return load_config(write_tiny_config(tmp_path, f"{name}.yaml", data_root=tmp_path / "data",
                                         output_dir=tmp_path / name),
                       ["solver.max_iter=6", "solver.checkpoint_period=3", "solver.steps=[4]",
                        "test.eval_period=0", "test.num_vis_images=0", "data.flip_prob=0.5"])


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        ref = run_train(_cfg(tmp_path, "full"), progress=False)
        calls = {"n": 0}

        def dies_in_iteration_4(model, batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise Killed()
            return detection_loss(model, batch)

        cfg = _cfg(tmp_path, "killed")
        with pytest.raises(Killed):
            run_train(cfg, loss_fn=dies_in_iteration_4, progress=False)
        assert find_last_checkpoint(cfg.output_dir).endswith("model_0000003.pth")
        resumed = run_train(cfg, resume=True, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    a = load_checkpoint(str(tmp_path / "full" / "model_final.pth"))
    b = load_checkpoint(str(tmp_path / "killed" / "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert ref["eval"] == resumed["eval"]
    # the resumed run logged iterations 4..6 after the first run's 1..3
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if "total_loss" in ln]) == 6


def test_truncated_checkpoint_is_refused(tmp_path):
    cfg = load_config(write_tiny_config(tmp_path), ["solver.max_iter=2", "solver.steps=[]", "solver.checkpoint_period=1",
                                                    "test.eval_period=0", "test.num_vis_images=0"])
    run_train(cfg, progress=False)
    ck = tmp_path / "out" / "model_0000001.pth"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth.*(truncated|corrupt)"):
        load_checkpoint(str(ck))
    # without the sha256 sidecar, torch's zip reader error is turned into our message too
    (tmp_path / "out" / "model_0000001.pth.sha256").unlink()
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth: unreadable"):
        load_checkpoint(str(ck))
    # --resume from a cut last checkpoint fails loudly rather than starting over or loading garbage
    (tmp_path / "out" / "last_checkpoint").write_text("model_0000001.pth\n")
    with pytest.raises(CheckpointError, match="model_0000001.pth"):
        run_train(cfg, resume=True, progress=False)
