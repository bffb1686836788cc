"""tools/eval.py: results mode for VOC and COCO, JSON output, one-line errors for bad input."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._data_helpers import write_coco, write_results, write_voc_tree

TOOL = Path(__file__).resolve().parents[1] / "tools" / "eval.py"


def _tool():
    spec = importlib.util.spec_from_file_location("detres_tool_eval", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def voc(tmp_path):
    write_voc_tree(tmp_path / "data" / "VOCdevkit" / "VOC2007", {
        "000001": {"objects": [("cat", 1, 1, 10, 10, 0), ("dog", 20, 20, 40, 40, 1)]},
        "000002": {"objects": [("cat", 5, 5, 30, 30, 0)]},
    }, write_images=False)
    res = write_results(tmp_path / "res", {"cat": ["000001 0.9 1 1 10 10", "000002 0.8 100 100 110 110"],
                                           "dog": ["000001 0.7 20 20 40 40"]})
    return tmp_path / "data", res


def _run(argv, capsys):
    rc = _tool().main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_voc_results_json_out(voc, tmp_path, capsys):
    data, res = voc
    rc, out, _ = _run(["--dataset", "voc07", "--data-root", data, "--results", res, "--json-out", tmp_path / "m.json"],
                      capsys)
    assert rc == 0 and "cat" in out and "mAP" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m) == {"mAP_11point", "mAP_area", "AP_11point", "AP_area"}
    # cat: TP then FP on npos = 2 -> rec [.5, .5], prec [1, .5] -> 11-point 6/11, area .5
    assert m["AP_11point"]["cat"] == pytest.approx(6 / 11) and m["AP_area"]["cat"] == pytest.approx(0.5)
    # dog: only a difficult box -> null; the detection on it is ignored
    assert m["AP_11point"]["dog"] is None and m["AP_area"]["dog"] is None
    assert m["mAP_area"] == pytest.approx(0.5)  # aeroplane etc. have no ground truth -> null, not 0


def test_coco_results(tmp_path, capsys):
    image_dir, ann, data = write_coco(tmp_path, degenerate=False)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in data["annotations"] if not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    rc, out, _ = _run(["--dataset", "coco", "--results", tmp_path / "dets.json", "--ann-file", ann,
                       "--json-out", tmp_path / "m.json"], capsys)
    assert rc == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["AP"] == pytest.approx(1.0) and set(m["per_category"]) == {"cat1", "cat5", "cat90"}
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} <= set(m)


def _one_line_error(rc, err, *needles):
    """Exit 2 and one "error: ..." line, the last one (log lines about the data may come before it)."""
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0]
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], errors[0]


def test_id_without_xml(voc, capsys):
    data, res = voc
    (data / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml").unlink()
    rc, _, err = _run(["--dataset", "voc07", "--data-root", data, "--results", res], capsys)
    _one_line_error(rc, err, "test.txt:2", "000002")


def test_malformed_xml(voc, capsys):
    data, res = voc
    (data / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml").write_text("<annotation><object>")
    rc, _, err = _run(["--dataset", "voc07", "--data-root", data, "--results", res], capsys)
    _one_line_error(rc, err, "000001.xml", "malformed XML", "line")


def test_wrong_field_count(voc, capsys):
    data, res = voc
    (res / "comp4_det_test_cat.txt").write_text("000001 0.9 1 1 10 10\n000002 0.8 1 1 10\n")
    rc, _, err = _run(["--dataset", "voc07", "--data-root", data, "--results", res], capsys)
    _one_line_error(rc, err, "comp4_det_test_cat.txt:2", "6 fields")


def test_unknown_class_file(voc, capsys):
    data, res = voc
    (res / "comp4_det_test_unicorn.txt").write_text("")
    rc, _, err = _run(["--dataset", "voc07", "--data-root", data, "--results", res], capsys)
    _one_line_error(rc, err, "comp4_det_test_unicorn.txt", "unknown class")


def test_unknown_image_id(voc, capsys):
    data, res = voc
    (res / "comp4_det_test_cat.txt").write_text("000001 0.9 1 1 10 10\n000099 0.8 1 1 10 10\n")
    rc, _, err = _run(["--dataset", "voc07", "--data-root", data, "--results", res], capsys)
    _one_line_error(rc, err, "comp4_det_test_cat.txt:2", "000099")


@pytest.mark.parametrize("which", ["results", "data_root", "ann_file", "checkpoint"])
def test_missing_paths(voc, tmp_path, capsys, which):
    data, res = voc
    if which == "results":
        argv = ["--dataset", "voc07", "--data-root", data, "--results", tmp_path / "nothing"]
        needle = "nothing"
    elif which == "data_root":
        argv = ["--dataset", "voc07", "--data-root", tmp_path / "nodata", "--results", res]
        needle = "nodata"
    elif which == "ann_file":
        (tmp_path / "d.json").write_text("[]")
        argv = ["--dataset", "coco", "--results", tmp_path / "d.json", "--ann-file", tmp_path / "no_ann.json"]
        needle = "no_ann.json"
    else:
        (tmp_path / "c.yaml").write_text("{}\n")
        argv = ["--config", tmp_path / "c.yaml", "--checkpoint", tmp_path / "no_ckpt.pth"]
        needle = "no_ckpt.pth"
    rc, _, err = _run(argv, capsys)
    _one_line_error(rc, err, needle)


def test_subprocess_exit_code_without_traceback(voc, tmp_path):
    data, res = voc
    (res / "comp4_det_test_cat.txt").write_text("000001 0.9\n")
    p = subprocess.run([sys.executable, str(TOOL), "--dataset", "voc07", "--data-root", str(data), "--results", str(res)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "comp4_det_test_cat.txt:1" in errors[0]


def test_config_checkpoint_mode_uses_the_checkpoints_meta(tmp_path, capsys):
    """--config/--checkpoint: the detector is rebuilt for the checkpoint's own preprocessing (here
    MSRA: BGR, 0-255), evaluated on the data set, and the metrics land in --json-out."""
    import torch

    from detres.backbones import MSRA_META
    from detres.config import load_config
    from detres.tasks.detection import build_model, load_model_from_checkpoint
    from tests._engine_helpers import write_tiny_config

    cfg_path = write_tiny_config(tmp_path)
    cfg = load_config(cfg_path)
    model = build_model(cfg, weights=None, weights_meta=dict(MSRA_META))
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": model.weights_meta}, ckpt)
    loaded = load_model_from_checkpoint(cfg, str(ckpt))
    assert loaded.transform.bgr and loaded.weights_meta["style"] == "msra"

    out = tmp_path / "m.json"
    rc, stdout, err = _run(["--config", cfg_path, "--checkpoint", ckpt, "--json-out", out], capsys)
    assert rc == 0, err
    metrics = json.loads(out.read_text())
    assert set(metrics["AP_11point"]) == {"circle", "square", "triangle"}

    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # cut short: one line naming the file, no traceback
    rc, _, err = _run(["--config", cfg_path, "--checkpoint", ckpt], capsys)
    assert rc != 0 and "model_final.pth" in err and "Traceback" not in err


def test_eval_under_torchrun_shards_the_images_and_gathers_the_single_process_metrics(tmp_path, capsys):
    """`torchrun --nproc_per_node=2 tools/eval.py --config ... --checkpoint ...`: each rank evaluates half of the
    test images, the evaluator gathers them, and the metrics (one table, one --json-out) equal one process's."""
    import subprocess
    import sys

    import torch

    from detres.config import load_config
    from detres.tasks.detection import build_model
    from tests._engine_helpers import write_tiny_config

    cfg_path = write_tiny_config(tmp_path)
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = build_model(cfg, weights=None)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "meta": model.weights_meta}, ckpt)
    single = tmp_path / "single.json"
    rc, _, err = _run(["--config", cfg_path, "--checkpoint", ckpt, "--json-out", single, "--device", "cpu"], capsys)
    assert rc == 0, err
    two = tmp_path / "two.json"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(root / "tools" / "eval.py"), "--config", str(cfg_path), "--checkpoint", str(ckpt),
                          "--json-out", str(two), "--device", "cpu"], capture_output=True, text=True, cwd=root,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    n = len((Path(cfg.data.root) / "shapes" / "ImageSets" / "Main" / "test.txt").read_text().split())
    import re

    shards = sorted(int(m) for m in re.findall(r"inference: (\d+) images", out.stderr))
    assert shards == [n // 2, n - n // 2]  # each rank read its half
    assert out.stdout.count("mAP") == 1  # rank 0 prints the table
    assert json.loads(two.read_text()) == json.loads(single.read_text())
