"""The paper-comparison table from fake run directories."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from detres.evaluation.compare import format_compare_markdown, format_compare_text, load_run


def _run_dir(root, name, ev, cfg_text):
    d = root / name
    d.mkdir()
    (d / "eval.json").write_text(json.dumps(ev))
    if cfg_text is not None:
        (d / "config.yaml").write_text(cfg_text)
    return d


def test_compare_table(tmp_path):
    voc = _run_dir(tmp_path, "voc07_r101", {"mAP_11point": 0.770, "mAP_area": 0.79, "AP_11point": {}, "AP_area": {}},
                   "model:\n  backbone:\n    name: resnet101\ndata:\n  dataset: voc\n  train: [2007_trainval, 2012_trainval]\n"
                   "  test: 2007_test\n")
    coco = _run_dir(tmp_path, "coco_vgg", {"AP": 0.20, "AP50": 0.40}, "model:\n  backbone:\n    name: vgg16\n")
    r50 = _run_dir(tmp_path, "voc07_r50", {"mAP_11point": 0.70, "mAP_area": 0.72}, None)  # no config.yaml
    runs = [load_run(d) for d in (voc, coco, r50)]
    assert runs[0].backbone == "resnet101" and runs[0].train_data == "07+12" and runs[0].benchmark == "voc07"
    assert runs[2].backbone == "?"
    text = format_compare_text(runs)
    assert "76.4" in text and "73.2" in text and "77.0" in text and "+0.6" in text  # 77.0 - 76.4
    assert "41.5" in text and "21.2" in text and "-1.5" in text and "-1.2" in text  # vgg16 vs VGG-16
    assert "-6.4 vs R101" in text  # unknown backbone compared with ResNet-101
    md = format_compare_markdown(runs)
    assert md.count("| paper |") == 4 and "|---|" in md


def test_voc12_uses_area_ap(tmp_path):
    d = _run_dir(tmp_path, "voc12", {"mAP_11point": 0.70, "mAP_area": 0.74},
                 "model: {backbone: {name: resnet101}}\ndata: {train: [2007_trainval, 2007_test, 2012_trainval], "
                 "test: 2012_test}\n")
    run = load_run(d)
    assert run.benchmark == "voc12" and run.train_data == "07++12" and run.metrics["mAP"] == pytest.approx(74.0)
    assert "+0.2" in format_compare_text([run])  # 74.0 - 73.8


def test_tool_compare_and_bad_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("detres_tool_eval2", Path(__file__).resolve().parents[1] / "tools" / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    a = _run_dir(tmp_path, "a", {"mAP_11point": 0.75, "mAP_area": 0.76}, "model: {backbone: {name: vgg16}}\n")
    assert tool.main(["--compare", str(a), "--markdown", str(tmp_path / "t.md")]) == 0
    assert "+1.8" in capsys.readouterr().out  # 75.0 - 73.2
    assert "| paper |" in (tmp_path / "t.md").read_text()
    (tmp_path / "b").mkdir()
    assert tool.main(["--compare", str(a), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.json" in err


def test_settings_beyond_the_network_are_listed(tmp_path):
    base = "data: {train: [2007_trainval, 2012_trainval], test: 2007_test}\n"
    vgg = _run_dir(tmp_path, "vgg", {"mAP_11point": 0.73, "mAP_area": 0.75},
                   "model: {backbone: {name: vgg16, weights: v.pth}, pooler: {type: roi_pool, resolution: 7}}\n"
                   "solver: {weight_decay: 0.0005}\n" + base)
    same = _run_dir(tmp_path, "r101", {"mAP_11point": 0.76, "mAP_area": 0.78},
                    "model: {backbone: {name: resnet101, weights: r.pth}, pooler: {type: roi_pool, resolution: 14}}\n"
                    "solver: {weight_decay: 0.0005}\n" + base)
    other = _run_dir(tmp_path, "r101_align", {"mAP_11point": 0.77, "mAP_area": 0.79},
                     "model: {backbone: {name: resnet101, weights: r.pth}, pooler: {type: roi_align, resolution: 14}}\n"
                     "solver: {weight_decay: 0.0001}\n" + base)
    fair = format_compare_text([load_run(vgg), load_run(same)])
    assert "differ only in the network" in fair and "more than the network" not in fair
    runs = [load_run(d) for d in (vgg, same, other)]
    from detres.evaluation.compare import config_differences
    assert config_differences(runs) == {"model.pooler.type": ["roi_pool", "roi_pool", "roi_align"],
                                        "solver.weight_decay": [0.0005, 0.0005, 0.0001]}
    text = format_compare_text(runs)
    assert "these runs differ in more than the network:" in text
    assert "model.pooler.type" in text and "solver.weight_decay" in text and "model.backbone.name" not in text.split(
        "more than the network:")[1]
    assert "| model.pooler.type |" in format_compare_markdown(runs)


def test_own_data_gets_no_paper_table(tmp_path):
    shop = _run_dir(tmp_path, "shop", {"AP": 0.31, "AP50": 0.52, "per_category": {}},
                    "model: {backbone: {name: resnet50}}\ndata: {dataset: coco, train: [/d/shop/train.json], "
                    "test: /d/shop/val.json, classes: null}\n")
    cars = _run_dir(tmp_path, "cars", {"mAP_11point": 0.61, "mAP_area": 0.63},
                    "model: {backbone: {name: resnet50}}\ndata: {dataset: voc, train: [train], test: val, "
                    "classes: [car, person]}\n")
    demo = _run_dir(tmp_path, "demo", {"mAP_11point": 0.9, "mAP_area": 0.91},
                    "model: {backbone: {name: resnet18}}\ndata: {dataset: shapes, train: [trainval], test: test}\n")
    paper = _run_dir(tmp_path, "coco_r101", {"AP": 0.27, "AP50": 0.48},
                     "model: {backbone: {name: resnet101}}\ndata: {dataset: coco, train: [train2014], test: val2014}\n")
    runs = [load_run(d) for d in (shop, cars, demo)]
    assert [r.benchmark for r in runs] == ["own"] * 3
    assert [r.own_data for r in runs] == ["COCO JSON files of your own", "data.classes chosen", "the synthetic shapes set"]
    text = format_compare_text(runs)
    assert not [ln for ln in text.splitlines() if ln.startswith("paper")]  # no paper rows, no deltas
    assert "Table" not in text and "48.4" not in text and "76.4" not in text and "Δ" not in text
    lines = text.splitlines()
    assert lines[0].startswith("Own data") and lines[1].split() == ["source", "backbone", "train", "data", "test",
                                                                     "data", "mAP_11point", "mAP_area", "AP50", "AP"]
    assert lines[3].split()[-4:] == ["-", "-", "52.0", "31.0"] and lines[4].split()[-4:] == ["61.0", "63.0", "-", "-"]
    both = format_compare_text([load_run(paper), runs[0]])
    assert "COCO val (paper Table 8)" in both and "48.4" in both and "Own data" in both
    assert format_compare_markdown(runs).count("| paper |") == 0


_VOC_CFG = ("model: {backbone: {name: resnet101}, roi: {bg_iou_thresh_lo: %s}}\n"
            "data: {dataset: voc, train: [2007_trainval, 2012_trainval], test: 2007_test}\n")


def test_pfr_differences_left_on_purpose_are_named_with_sources(tmp_path):
    """VOC with the paper's background range [0.1, 0.5): the compare output names it beside pfr's BG_THRESH_LO 0.0
    (both files and lines), and end-to-end vs alternating training; a COCO run gets its schedule line instead."""
    voc = load_run(_run_dir(tmp_path, "voc", {"mAP_11point": 0.76, "mAP_area": 0.78}, _VOC_CFG % "0.1"))
    text = format_compare_text([voc])
    assert "differences from py-faster-rcnn (781a917):\n  " + voc.run_dir + ":\n" in text
    assert "    - background RoI range (model.roi.bg_iou_thresh_lo) = 0.1: here [0.1, 0.5)" in text
    assert "experiments/cfgs/faster_rcnn_end2end.yml:9" in text and "faster_rcnn_alt_opt.yml:3" in text
    assert "tools/train_faster_rcnn_alt_opt.py:228-319" in text and "faster_rcnn_end2end.sh:51-57" in text
    assert "COCO schedule" not in text
    # a config.yaml without solver.momentum_style (written before the key) ran with its default, PyTorch's SGD
    assert "    - SGD momentum (solver.momentum_style) = pytorch: here" in text
    md = format_compare_markdown([voc])
    assert f"**{voc.run_dir}**:" in md and "- background RoI range" in md and "- training scheme" in md
    # negative control: pfr's own value is no difference to list
    same = load_run(_run_dir(tmp_path, "voc_pfr", {"mAP_11point": 0.76, "mAP_area": 0.78}, _VOC_CFG % "0.0"))
    text = format_compare_text([same])
    assert "background RoI range" not in text and "training scheme" in text
    coco = load_run(_run_dir(tmp_path, "coco", {"AP": 0.27, "AP50": 0.48},
                             "model: {backbone: {name: resnet101}, roi: {bg_iou_thresh_lo: 0.0}}\n"))
    text = format_compare_text([coco])
    assert "COCO schedule and test set" in text and "faster_rcnn_end2end.sh:39" in text
    assert "background RoI range" not in text


def _paper_run(root, name, ev, overrides=()):
    """A fake finished run of configs/<name>.yaml: its full config.yaml (as a run writes it) and an eval.json."""
    from detres.config import load_config, save_config

    d = root / name
    d.mkdir()
    save_config(load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml", list(overrides)),
                d / "config.yaml")
    (d / "eval.json").write_text(json.dumps(ev))
    return load_run(d)


def _listed_under(text, run_dir):
    """The difference names (before ':' or ' = ') listed under ``run_dir`` in the compare text."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  ") and run_dir in ln and ln.endswith(":"))
    out = []
    for ln in lines[start + 1:]:
        if not ln.startswith("    - "):
            break
        out.append(ln[6:].split(": here ")[0].split(" = ")[0])
    return out


_ALL_RUNS = ["training scheme", "horizontal flips", "RPN objectness", "box decoding and clipping", "input padding",
             "processes x images not dividing the reference batch"]


def test_compare_lists_the_differences_of_each_paper_run(tmp_path, capsys):
    """tools/eval.py --compare on a voc0712_r101 and a coco_r101 run: under each, exactly the differences that
    apply to it (the 07+12 schedule only under the VOC run, the COCO ones only under the COCO run); the ones the
    paper configs remove by a key (Caffe momentum, crowd as ground truth) appear only for a run that sets the key
    otherwise."""
    from detres.evaluation.compare import PFR_DIFFERENCES

    voc = _paper_run(tmp_path, "voc0712_r101", {"mAP_11point": 0.76, "mAP_area": 0.78})
    coco = _paper_run(tmp_path, "coco_r101", {"AP": 0.27, "AP50": 0.48})
    spec = importlib.util.spec_from_file_location("detres_tool_eval3", Path(__file__).resolve().parents[1] / "tools"
                                                  / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--compare", voc.run_dir, coco.run_dir]) == 0
    text = capsys.readouterr().out
    assert _listed_under(text, voc.run_dir) == [
        "training scheme", "background RoI range (model.roi.bg_iou_thresh_lo)", "horizontal flips",
        "07+12 / 07++12 schedule: images per iteration", "RPN objectness", "box decoding and clipping",
        "input padding", "processes x images not dividing the reference batch"]
    assert _listed_under(text, coco.run_dir) == [
        "training scheme", "horizontal flips", "COCO schedule and test set", "COCO: images per RPN update",
        "RPN objectness", "box decoding and clipping", "input padding",
        "processes x images not dividing the reference batch"]
    # every unkeyed entry is listed under some run of the two: none is dead
    assert {d.what for d in PFR_DIFFERENCES if d.key is None} <= set(_listed_under(text, voc.run_dir)) | set(
        _listed_under(text, coco.run_dir))
    # a VOC07-only run has no 07+12 schedule entry; runs with the same list are grouped under one heading
    voc07 = _paper_run(tmp_path, "voc07_r50", {"mAP_11point": 0.7, "mAP_area": 0.72})
    assert "07+12 / 07++12 schedule: images per iteration" not in _listed_under(format_compare_text([voc07]),
                                                                               voc07.run_dir)
    vgg = _paper_run(tmp_path, "voc0712_vgg16", {"mAP_11point": 0.73, "mAP_area": 0.75})
    both = format_compare_text([vgg, voc])
    assert f"  {vgg.run_dir}, {voc.run_dir}:" in both and both.count("    - training scheme") == 1
    # the keyed ones: named under the run that leaves pfr's behaviour, with its value
    coco_pt = _paper_run(tmp_path, "coco_vgg16", {"AP": 0.2, "AP50": 0.4},
                         ["solver.momentum_style=pytorch", "data.coco_crowd=ignore"])
    listed = format_compare_text([coco_pt])
    assert "    - COCO crowd regions (data.coco_crowd) = ignore: here" in listed
    assert "    - SGD momentum (solver.momentum_style) = pytorch: here" in listed
    assert "sgd_solver.cpp:232-234" in listed and "lib/roi_data_layer/minibatch.py:37" in listed


def test_paper_configs_differ_from_pfr_where_the_compare_list_says():
    """The list's key-based entries hold for the paper configs: VOC keeps [0.1, 0.5) (a difference), COCO has
    pfr's 0.0; both take Caffe's momentum, and COCO trains on crowd boxes as pfr does (differences removed)."""
    from detres.config import load_config
    from detres.evaluation.compare import PFR_DIFFERENCES

    root = Path(__file__).resolve().parents[1] / "configs"
    keyed = {d.key: d.pfr_value for d in PFR_DIFFERENCES if d.key}
    assert keyed == {"model.roi.bg_iou_thresh_lo": 0.0, "data.coco_crowd": "as_ground_truth",
                     "solver.momentum_style": "caffe"}
    voc, coco = load_config(root / "voc07_r101.yaml"), load_config(root / "coco_r101.yaml")
    assert voc.model.roi.bg_iou_thresh_lo == 0.1 != keyed["model.roi.bg_iou_thresh_lo"]
    assert coco.model.roi.bg_iou_thresh_lo == 0.0 == keyed["model.roi.bg_iou_thresh_lo"]
    assert voc.solver.momentum_style == coco.solver.momentum_style == "caffe"
    assert coco.data.coco_crowd == "as_ground_truth"
