"""The one table of a run folder's files (tasks.common.RUN_OUTPUTS): protected and cleaned from it alone."""
from __future__ import annotations

import pytest

from detres.tasks.common import RUN_FILES, RUN_FOLDERS, RUN_OUTPUTS, prepare_output_dir

#: Every file a training run (detection or classification, VOC server results included) writes, by name.
WRITTEN = ("model_0000199.pth", "model_0000199.pth.sha256", "model_final.pth", "model_final.pth.sha256",
           "last_checkpoint", "metrics.jsonl", "eval.json", "log.txt", "config.yaml", "events.out.tfevents.1.host",
           "eval.json.tmp.123", "training_curves.png", "pr_curves.png", "results.tar.gz",
           "results/comp4_det_test_cat.txt", "vis/000001.png")
RESULTS = ("model_final.pth", "metrics.jsonl", "eval.json", "training_curves.png", "pr_curves.png",
           "results.tar.gz", "results/comp4_det_test_cat.txt", "vis/000001.png")


def _write(out, names):
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")


def test_the_views_come_from_the_one_table():
    assert set(RUN_FILES) | {f"{d}/" for d in RUN_FOLDERS} == set(RUN_OUTPUTS)
    assert set(RUN_OUTPUTS.values()) == {"result", "run"}


def test_overwrite_removes_everything_a_run_wrote_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    _write(out, WRITTEN)
    (out / "notes.md").write_text("the user's")
    with pytest.raises(ValueError, match="holds an earlier run's files"):
        prepare_output_dir(str(out), resume=False, overwrite=False)
    assert all((out / name).exists() for name in WRITTEN)  # refused: nothing removed
    prepare_output_dir(str(out), resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]  # no stale picture or archive left


@pytest.mark.parametrize("name", RESULTS)
def test_each_result_alone_protects_the_folder(tmp_path, name):
    out = tmp_path / "run"
    _write(out, [name])
    with pytest.raises(ValueError, match=f"holds an earlier run's files \\({name.split('/')[0]}"):
        prepare_output_dir(str(out), resume=False, overwrite=False)
