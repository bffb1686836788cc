"""VOC 2012 test has no public labels: detres writes the evaluation server's files and a .tar.gz, not AP."""
from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from _engine_helpers import write_tiny_config
from detres.config import load_config
from detres.data.voc import VOC_CLASSES

ROOT = Path(__file__).resolve().parents[1]
IDS = ["2008_000001", "2008_000007"]


def _voc2012_test(root: Path) -> Path:
    """A VOC2012 test tree as released: the image set and the images, no Annotations."""
    d = root / "VOCdevkit" / "VOC2012"
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "JPEGImages").mkdir()
    (d / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in IDS))
    for i in IDS:
        cv2.imwrite(str(d / "JPEGImages" / f"{i}.jpg"), np.full((48, 64, 3), 100, np.uint8))
    return root


def _tool():
    spec = importlib.util.spec_from_file_location("detres_tool_eval_server", ROOT / "tools" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _archive_members(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


def test_results_mode_packs_the_server_submission(tmp_path, capsys):
    data = _voc2012_test(tmp_path / "data")
    res = tmp_path / "res"
    res.mkdir()
    (res / "comp4_det_test_cat.txt").write_text("2008_000001 0.9 1 1 10 10\n2008_000007 0.5 2 3 20 30\n")
    rc = _tool().main(["--dataset", "voc12", "--split", "test", "--data-root", str(data), "--results", str(res)])
    out = capsys.readouterr().out
    assert rc == 0 and "upload" in out and "server" in out
    members = _archive_members(tmp_path / "res_server.tar.gz")
    assert set(members) == {f"results/VOC2012/Main/comp4_det_test_{c}.txt" for c in VOC_CLASSES}
    cat = members["results/VOC2012/Main/comp4_det_test_cat.txt"].split()
    assert cat[:2] == ["2008_000001", "0.9"] and len(cat) == 12
    assert members["results/VOC2012/Main/comp4_det_test_dog.txt"] == ""
    # an id outside the test image set is refused, naming the file and line
    (res / "comp4_det_test_cat.txt").write_text("2008_000001 0.9 1 1 10 10\n2099_000001 0.5 2 3 20 30\n")
    rc = _tool().main(["--dataset", "voc12", "--split", "test", "--data-root", str(data), "--results", str(res)])
    err = capsys.readouterr().err
    assert rc == 2 and "comp4_det_test_cat.txt:2" in err and "2099_000001" in err


def test_model_mode_with_unlabelled_test_split(tmp_path, capsys):
    from detres.tasks.detection import build_model, run_eval

    data = _voc2012_test(tmp_path / "data")
    cfg_path = write_tiny_config(tmp_path, data={"dataset": "voc", "root": str(data), "train": ["2012_test"],
                                                 "test": "2012_test", "min_size": 48, "max_size": 64},
                                 model={"roi": {"score_thresh": 0.0}})
    cfg = load_config(cfg_path, ["test.has_labels=false", f"data.root={data}"])
    torch.manual_seed(0)
    model = build_model(cfg, weights=None)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": model.weights_meta}, ckpt)
    metrics = run_eval(cfg, str(ckpt), device="cpu", output_dir=str(tmp_path / "sub"), num_workers=0)
    assert metrics["num_images"] == 2 and metrics["num_detections"] > 0 and "mAP_11point" not in metrics
    members = _archive_members(Path(metrics["server_results"]))
    lines = [ln for text in members.values() for ln in text.splitlines()]
    assert len(lines) == metrics["num_detections"] and {ln.split()[0] for ln in lines} <= set(IDS)
    assert (tmp_path / "sub" / "VOC2012" / "Main" / "comp4_det_test_person.txt").is_file()
    # with labels assumed, the missing annotations are an error naming the file
    with pytest.raises(ValueError, match="has no annotation file"):
        run_eval(load_config(cfg_path, [f"data.root={data}"]), str(ckpt), device="cpu", num_workers=0)


def test_compare_lists_a_server_run_without_a_number(tmp_path):
    from detres.evaluation.compare import format_compare_text, load_run

    d = tmp_path / "voc12_r101"
    d.mkdir()
    (d / "eval.json").write_text(json.dumps({"server_results": "x.tar.gz", "results_dir": "x", "num_images": 2,
                                             "num_detections": 3}))
    (d / "config.yaml").write_text("model: {backbone: {name: resnet101}}\ndata: {train: [2007_trainval, 2007_test, "
                                   "2012_trainval], test: 2012_test}\n")
    run = load_run(d)
    assert run.benchmark == "voc12" and run.metrics == {"mAP": None}
    assert "n/a" in format_compare_text([run])
