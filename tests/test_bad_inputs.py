"""A careless or hostile user's inputs, through the tools: each ends in one line naming the file or key and
exit code 2 (no traceback), or, where the input is usable but suspicious, in a warning; no payload runs.

Each case builds its input in a temporary folder and calls a tool's ``main`` in-process. Run this file as a
script to classify every case against any checkout (one subprocess per case), for before/after counts:

    python tests/test_bad_inputs.py [--repo DIR]
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import pathlib
import pickle
import sys
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _data_helpers import write_coco, write_results, write_voc_tree  # noqa: E402
from _engine_helpers import write_tiny_config  # noqa: E402


class _Payload:
    """Unpickling this creates the marker file: a harmless stand-in for os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@dataclass
class Case:
    name: str
    tool: str
    build: Callable[[pathlib.Path], list[str]]  # writes the inputs, returns the tool's argv
    expect: str  # "error" (exit 2, one line containing `needle`) or "warning" (exit 0, `needle` in the log)
    needle: str | Callable[[pathlib.Path], str]


def _cfg(tmp, *overrides, name="tiny.yaml", **over):
    """A tiny shapes config (1 iteration, no evaluation or pictures) plus overrides."""
    path = write_tiny_config(tmp, name, **over)
    return [str(path), "solver.max_iter=1", "solver.steps=[]", "test.eval_period=0", "test.num_vis_images=0",
            "solver.checkpoint_period=0", *overrides]


def _voc(tmp, images=None, split="trainval"):
    """A tiny VOC tree in tmp/voc with real JPEGs; returns its root."""
    images = images or {"000001": {"size": (64, 48), "objects": [("cat", 5, 5, 40, 40, 0)]},
                        "000002": {"size": (64, 48), "objects": [("dog", 10, 10, 30, 30, 0)]}}
    return write_voc_tree(tmp / "voc", images, split=split)


def _voc_cfg(tmp, tree, *overrides):
    """A tiny config training on a VOC-layout tree (tree = <root>/VOC2007)."""
    (tmp / "data").mkdir(exist_ok=True)
    link = tmp / "data" / "VOC2007"
    if not link.exists():
        link.symlink_to(tree, target_is_directory=True)
    return _cfg(tmp, "data.dataset=voc", f"data.root={tmp / 'data'}", "data.train=[2007_trainval]",
                "data.test=2007_trainval", *overrides)


def _xml(tree, image_id, body):
    (tree / "Annotations" / f"{image_id}.xml").write_text(body)


def _checkpoint(tmp, backbone="resnet18"):
    import torch

    from detres.config import load_config
    from detres.tasks.detection import build_model

    cfg = load_config(write_tiny_config(tmp, "ck.yaml"), [f"model.backbone.name={backbone}"])
    model = build_model(cfg, weights=None)
    path = tmp / f"{backbone}.pth"
    torch.save({"model": model.state_dict(), "meta": model.weights_meta}, path)
    return path


def _image(tmp, name="a.jpg"):
    path = tmp / name
    cv2.imwrite(str(path), np.full((40, 50, 3), 120, np.uint8))
    return path


def _results_tree(tmp):
    tree = write_voc_tree(tmp / "data" / "VOCdevkit" / "VOC2007", {
        "000001": {"objects": [("cat", 1, 1, 10, 10, 0)]}, "000002": {"objects": [("cat", 5, 5, 30, 30, 0)]}},
        split="test", write_images=False)
    return tree


def _case_truncated(tmp):
    tree = _voc(tmp)
    data = (tree / "JPEGImages" / "000001.jpg").read_bytes()
    (tree / "JPEGImages" / "000001.jpg").write_bytes(data[: len(data) // 2])
    return _voc_cfg(tmp, tree)


def _case_all_outside(tmp):
    return _voc_cfg(tmp, _voc(tmp, {"000001": {"size": (64, 48), "objects": [("cat", 100, 100, 120, 120, 0)]},
                                    "000002": {"size": (64, 48), "objects": [("dog", 10, 10, 30, 30, 0)]}}))


def _case_voc_xml(tmp, body):
    tree = _voc(tmp)
    _xml(tree, "000001", body)
    return _voc_cfg(tmp, tree)


def _case_dup_id(tmp):
    tree = _voc(tmp)
    (tree / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000001\n")
    return _voc_cfg(tmp, tree)


def _case_missing_image(tmp):
    tree = _voc(tmp)
    (tree / "JPEGImages" / "000002.jpg").unlink()
    return _voc_cfg(tmp, tree)


def _case_id_without_xml(tmp):
    tree = _voc(tmp)
    (tree / "Annotations" / "000002.xml").unlink()
    return _voc_cfg(tmp, tree)


def _coco_cfg(tmp, mutate):
    image_dir, ann, data = write_coco(tmp / "coco_src")
    mutate(data)
    root = tmp / "data" / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data) if isinstance(data, dict) else data)
    (root / "train").symlink_to(image_dir, target_is_directory=True)
    return _cfg(tmp, "data.dataset=coco", f"data.root={tmp / 'data'}", "data.train=[train]", "data.test=train",
                "model.num_classes=4")


def _coco_results(tmp, dets):
    image_dir, ann, data = write_coco(tmp, degenerate=False)
    (tmp / "dets.json").write_text(json.dumps(dets(data)))
    return ["--dataset", "coco", "--results", str(tmp / "dets.json"), "--ann-file", str(ann)]


def _voc_results(tmp, lines, raw: bytes | None = None):
    _results_tree(tmp)
    res = write_results(tmp / "res", {"cat": lines})
    if raw is not None:
        (res / "comp4_det_test_cat.txt").write_bytes(raw)
    return ["--dataset", "voc07", "--data-root", str(tmp / "data"), "--results", str(res)]


def _finished_run(tmp):
    argv = _cfg(tmp, f"output_dir={tmp / 'run'}")
    (tmp / "run").mkdir()
    (tmp / "run" / "model_final.pth").write_bytes(b"an earlier run's weights")
    return argv


def _eval_ckpt(tmp, make_ckpt, *extra):
    cfg = write_tiny_config(tmp, "ev.yaml")
    return ["--config", str(cfg), "--checkpoint", str(make_ckpt(tmp)), "--num-workers", "0", *extra]


def _cut_ckpt(tmp):
    path = _checkpoint(tmp)
    path.write_bytes(path.read_bytes()[:3000])
    return path


def _payload_ckpt(tmp):
    path = tmp / "evil.pth"
    path.write_bytes(pickle.dumps({"model": _Payload(tmp / "PAYLOAD_RAN")}))
    return path


def _yaml_payload(tmp):
    path = tmp / "evil.yaml"
    path.write_text(f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{tmp / 'PAYLOAD_RAN'}']]\n")
    return [str(path)]


CASES = [
    # configs
    Case("unknown key", "train_det", lambda t: _cfg(t, "solver.base_lrr=0.1"), "error", "solver.base_lr"),
    Case("wrong type", "train_det", lambda t: _cfg(t, "solver.max_iter=lots"), "error", "solver.max_iter"),
    Case("negative gamma", "train_det", lambda t: _cfg(t, "solver.gamma=-1"), "error", "solver.gamma"),
    Case("negative clip norm", "train_det", lambda t: _cfg(t, "solver.clip_grad_norm=-1"), "error", "solver.clip_grad_norm"),
    Case("score threshold above 1", "train_det", lambda t: _cfg(t, "model.roi.score_thresh=1.5"), "error", "model.roi.score_thresh"),
    Case("negative learning rate", "train_det", lambda t: _cfg(t, "solver.base_lr=-0.1"), "error", "solver.base_lr"),
    Case("zero RoIs per image", "train_det", lambda t: _cfg(t, "model.roi.batch_size_per_image=0"), "error", "model.roi.batch_size_per_image"),
    Case("decreasing steps", "train_det", lambda t: _cfg(t, "solver.max_iter=10", "solver.steps=[5,3]"), "error", "solver.steps"),
    Case("step beyond max_iter", "train_det", lambda t: _cfg(t, "solver.steps=[50]"), "error", "solver.steps"),
    Case("too few classes", "train_det", lambda t: _cfg(t, "model.num_classes=2"), "error", "model.num_classes"),
    Case("unknown data set", "train_det", lambda t: _cfg(t, "data.dataset=pascal"), "error", "data.dataset"),
    Case("unknown backbone", "train_det", lambda t: _cfg(t, "model.backbone.name=resnet999"), "error", "model.backbone.name"),
    Case("unknown norm", "train_det", lambda t: _cfg(t, "model.backbone.norm=layernorm"), "error", "model.backbone.norm"),
    Case("max_size below min_size", "train_det", lambda t: _cfg(t, "data.max_size=32"), "error", "data.max_size"),
    Case("config file missing", "train_det", lambda t: [str(t / "nope.yaml")], "error", "nope.yaml"),
    Case("config not YAML", "train_det", lambda t: [str(t / "bad.yaml")] if (t / "bad.yaml").write_text("a: [1,\n") else [],
         "error", "bad.yaml"),
    Case("YAML code payload", "train_det", _yaml_payload, "error", "evil.yaml"),
    Case("weights file missing", "train_det", lambda t: _cfg(t, f"model.backbone.weights={t / 'no_weights.pth'}"), "error", "no_weights.pth"),
    Case("weights file junk", "train_det", lambda t: _cfg(t, f"model.backbone.weights={t / 'junk.pth'}")
         if (t / "junk.pth").write_bytes(b"not a checkpoint") else [], "error", "junk.pth"),
    Case("finished output_dir", "train_det", _finished_run, "error", "run"),
    Case("--new-solver without --resume", "train_det", lambda t: _cfg(t) + ["--new-solver"], "error", "--new-solver"),
    # VOC data
    Case("malformed XML", "train_det", lambda t: _case_voc_xml(t, "<annotation><object>"), "error", "000001.xml"),
    Case("infinite coordinate", "train_det", lambda t: _case_voc_xml(
        t, "<annotation><size><width>64</width><height>48</height></size><object><name>cat</name><bndbox><xmin>1</xmin>"
           "<ymin>1</ymin><xmax>inf</xmax><ymax>10</ymax></bndbox></object></annotation>"), "error", "000001.xml"),
    Case("NaN coordinate", "train_det", lambda t: _case_voc_xml(
        t, "<annotation><size><width>64</width><height>48</height></size><object><name>cat</name><bndbox><xmin>nan</xmin>"
           "<ymin>1</ymin><xmax>9</xmax><ymax>10</ymax></bndbox></object></annotation>"), "error", "non-finite"),
    Case("unknown class", "train_det", lambda t: _case_voc_xml(
        t, "<annotation><object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
           "</bndbox></object></annotation>"), "error", "unicorn"),
    Case("id without XML", "train_det", _case_id_without_xml, "error", "trainval.txt:2"),
    Case("id listed twice", "train_det", _case_dup_id, "error", "trainval.txt:3"),
    Case("listed image missing", "train_det", _case_missing_image, "error", "000002.jpg"),
    Case("truncated JPEG", "train_det", _case_truncated, "error", "000001.jpg"),
    Case("every box outside the image", "train_det", _case_all_outside, "warning", "outside the image"),
    # COCO data
    Case("COCO not JSON", "train_det", lambda t: _coco_json_text(t), "error", "instances_train.json"),
    Case("COCO image id twice", "train_det", lambda t: _coco_cfg(t, lambda d: d["images"].append(dict(d["images"][0]))),
         "error", "listed twice"),
    Case("COCO unknown category", "train_det", lambda t: _coco_cfg(
        t, lambda d: d["annotations"].append({"id": 99, "image_id": 1, "category_id": 77, "bbox": [1, 1, 5, 5],
                                              "area": 25, "iscrowd": 0})), "error", "category_id 77"),
    Case("COCO degenerate box", "train_det", lambda t: _coco_cfg(t, lambda d: None), "warning", "zero or negative size"),
    # results files
    Case("COCO result score true", "eval", lambda t: _coco_results(
        t, lambda d: [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": True}]), "error", "dets.json"),
    Case("COCO result negative width", "eval", lambda t: _coco_results(
        t, lambda d: [{"image_id": 1, "category_id": 1, "bbox": [10, 5, -30, 20], "score": 0.5}]), "warning", "negative width"),
    Case("COCO result missing key", "eval", lambda t: _coco_results(
        t, lambda d: [{"image_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}]), "error", "category_id"),
    Case("VOC result inverted box", "eval", lambda t: _voc_results(t, ["000001 0.9 10 10 1 1"]), "warning", "x2 < x1"),
    Case("VOC result not UTF-8", "eval", lambda t: _voc_results(t, [], raw=b"000001 0.9 1 1 10 10\n\xff\xfe\n"),
         "error", "comp4_det_test_cat.txt"),
    Case("VOC result short line", "eval", lambda t: _voc_results(t, ["000001 0.9 1 1"]), "error", "comp4_det_test_cat.txt:1"),
    # checkpoints
    Case("checkpoint cut short", "eval", lambda t: _eval_ckpt(t, _cut_ckpt), "error", "resnet18.pth"),
    Case("checkpoint with code", "eval", lambda t: _eval_ckpt(t, _payload_ckpt), "error", "evil.pth"),
    Case("checkpoint of another network", "eval", lambda t: _eval_ckpt(t, lambda d: _checkpoint(d, "resnet50")),
         "error", "resnet50.pth"),
    Case("predict: image missing", "predict", lambda t: [str(write_tiny_config(t)), str(t / "no.jpg"),
                                                          "--checkpoint", str(_checkpoint(t))],
         "error", "no.jpg"),
    Case("predict: not an image", "predict", lambda t: [str(write_tiny_config(t)), str(t / "x.jpg"),
                                                          "--checkpoint", str(_checkpoint(t))]
         if (t / "x.jpg").write_text("not an image") else [], "error", "x.jpg"),
    Case("benchmark: config missing", "benchmark", lambda t: ["train-step", str(t / "none.yaml")], "error", "none.yaml"),
    Case("model_stats: unknown backbone", "model_stats", lambda t: ["--backbones", "resnet7"], "error", "resnet7"),
    Case("train_cls: ImageNet folder missing", "train_cls", lambda t: [str(ROOT / "configs" / "imagenet_r50.yaml"),
         f"data.root={t / 'none'}", f"output_dir={t / 'out'}", "model.name=resnet18"], "error", "none"),
]


def _coco_json_text(tmp):
    argv = _coco_cfg(tmp, lambda d: None)
    (tmp / "data" / "coco" / "annotations" / "instances_train.json").write_text('{"images": [')
    return argv


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"_bad_input_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = case.build(tmp_path)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger("detres")
    for h in list(root.handlers):  # an earlier tool's handler may hold a closed capture stream
        root.removeHandler(h)
    root.propagate = True
    if case.tool == "train_det":
        argv = argv + ["--no-progress"] if argv and argv[0].endswith(".yaml") and "--new-solver" not in argv else argv
    try:
        tool = _tool(case.tool)
        # the tools (re)configure the "detres" logger; capture its warnings wherever they go
        logging.getLogger().addHandler(handler)
        root.addHandler(handler)
        code = tool.main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
        root.removeHandler(handler)
    out = capsys.readouterr()
    assert not (tmp_path / "PAYLOAD_RAN").exists(), "a payload ran"
    assert "Traceback" not in out.err
    if case.expect == "error":
        lines = [ln for ln in out.err.splitlines() if ln.startswith("error: ")]
        assert code == 2, out.err[-2000:]
        assert len(lines) == 1 and case.needle in lines[0], out.err[-2000:]
    else:
        assert code == 0, out.err[-2000:]
        assert case.needle in log.getvalue() + out.err, (log.getvalue() + out.err)[-2000:]


def test_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """A checkpoint write that fails on a full disk names the file and the cause (torch itself says
    "unexpected pos"), and the half-written temporary file is gone."""
    import detres.utils.io as dio
    from detres.utils.cli import run_tool

    monkeypatch.setattr(dio, "_nearly_full", lambda folder, margin=0: True)

    def write(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 704 vs 598")

    import argparse
    code = run_tool(argparse.ArgumentParser(), lambda a: dio.atomic_write(tmp_path / "m.pth", write, binary=True), [])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "m.pth" in err[0] and "No space left" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_resume_cleans_up_and_trims_metrics(tmp_path):
    """A temporary file of a killed write is removed and metrics.jsonl rows past the checkpoint are trimmed."""
    from detres.config import load_config
    from detres.tasks.detection import run_train

    cfg = load_config(write_tiny_config(tmp_path), ["solver.max_iter=2", "solver.steps=[]", "solver.checkpoint_period=1",
                                                    "test.eval_period=0", "test.num_vis_images=0"])
    run_train(cfg, progress=False)
    out = tmp_path / "out"
    (out / "model_0000002.pth.tmp.999").write_bytes(b"x" * 100)
    (out / "last_checkpoint").write_text("model_0000001.pth\n")  # as if the run died after iteration 1's checkpoint
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 7, "total_loss": 1.0}) + "\n")
    cfg.solver.max_iter = 3
    run_train(cfg, resume=True, progress=False)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert not list(out.glob("*.tmp.*"))
    iters = [r["iteration"] for r in rows if "total_loss" in r]
    assert iters == [1, 2, 3] and 7 not in iters  # the first run's 1, then the resumed 2 and 3


def test_resume_with_changed_solver_keeps_the_old_rate_unless_asked(tmp_path):
    from detres.config import load_config
    from detres.engine.checkpoint import load_checkpoint
    from detres.tasks.detection import run_train

    base = ["solver.steps=[]", "solver.checkpoint_period=1", "test.eval_period=0", "test.num_vis_images=0",
            "solver.warmup_iters=0", "solver.base_lr=0.01"]
    for flag in (False, True):
        out = tmp_path / f"run_{flag}"
        cfg = load_config(write_tiny_config(tmp_path, f"{flag}.yaml", output_dir=out), ["solver.max_iter=1", *base])
        run_train(cfg, progress=False)
        cfg = load_config(write_tiny_config(tmp_path, f"{flag}.yaml", output_dir=out),
                          ["solver.max_iter=2", *base[:-1], "solver.base_lr=0.002"])
        run_train(cfg, resume=True, new_solver=flag, progress=False)
        log = (out / "log.txt").read_text()
        assert "solver.base_lr: 0.01 -> 0.002" in log and ("--new-solver: applying" in log) == flag
        lr = load_checkpoint(str(out / "model_final.pth"))["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(0.002 if flag else 0.01)


# --------------------------------------------------------------------------------------------------
# the before/after table: python tests/test_bad_inputs.py [--repo DIR]
# --------------------------------------------------------------------------------------------------
def _classify(repo: pathlib.Path) -> list[tuple[str, str]]:
    import os
    import subprocess
    import tempfile

    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            tmp = pathlib.Path(d)
            argv = case.build(tmp)
            env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
            p = subprocess.run([sys.executable, str(repo / "tools" / f"{case.tool}.py"), *argv], capture_output=True,
                               text=True, cwd=tmp, env=env, timeout=600)
            err = p.stderr
            errors = [ln for ln in err.splitlines() if ln.startswith("error: ") or ln.startswith("usage:")]
            if (tmp / "PAYLOAD_RAN").exists():
                kind = "payload ran"
            elif "Traceback" in err:
                kind = "traceback"
            elif p.returncode != 0 and errors and (case.needle in err):
                kind = "clear error"
            elif p.returncode != 0:
                kind = "unclear error"
            elif case.expect == "warning" and case.needle in err:
                kind = "warned"
            else:
                kind = "silent"
            rows.append((case.name, kind))
    return rows


if __name__ == "__main__":
    import argparse
    import collections

    parser = argparse.ArgumentParser(description="classify every bad-input case against a checkout")
    parser.add_argument("--repo", default=str(ROOT), help="the checkout to run (default: this one)")
    args = parser.parse_args()
    rows = _classify(pathlib.Path(args.repo).resolve())
    for name, kind in rows:
        print(f"{kind:14s} {name}")
    print(dict(collections.Counter(k for _, k in rows)), f"({len(rows)} cases)")
