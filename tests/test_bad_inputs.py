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
    expect: str  # "error" (exit 2, one line containing `needle`), "failure" (the same, exit 1), "warning" (exit 0,
    # `needle` in the log) or "ok" (exit 0: an input that looks odd but is right)
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


# --------------------------------------------------------------------------------------------------
# second pass (issue 21): nothing of the user's overwritten, no silent wrong results, no tracebacks
# --------------------------------------------------------------------------------------------------
def _file(tmp, name, data):
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _dup_yaml(tmp):
    argv = _cfg(tmp)
    path = pathlib.Path(argv[0])
    path.write_text(path.read_text() + "solver:\n  base_lr: 0.5\n")  # a second top-level solver block
    return argv


def _bomb_yaml(tmp):
    """Seven levels of nine aliases: 4.8 million values once expanded, from a 200-byte file."""
    levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 7):
        levels.append(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    path = tmp / "bomb.yaml"
    path.write_text(f"solver:\n  steps: [{', '.join(levels)}]\n")
    return [str(path)]


def _utf16_yaml(tmp):
    argv = _cfg(tmp)
    path = pathlib.Path(argv[0])
    path.write_bytes(path.read_text().encode("utf-16"))
    return argv


def _flip_ckpt(tmp):
    """A checkpoint copied without its .sha256, one bit of its largest tensor flipped."""
    import zipfile

    path = _checkpoint(tmp)
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + \
        int.from_bytes(data[local + 28:local + 30], "little")
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def _lock(tmp, pid):
    import socket
    import time

    out = tmp / "out"
    out.mkdir(exist_ok=True)
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "time": time.time(),
                                              "started": "now"}))
    return _cfg(tmp)


def _dead_pid():
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _earlier_results_no_ckpt(tmp):
    argv = _cfg(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "eval.json").write_text('{"mAP": 0.7}')
    (tmp / "out" / "metrics.jsonl").write_text('{"iteration": 20, "total_loss": 0.5}\n')
    return argv


def _config_in_output(tmp):
    (tmp / "out").mkdir()
    path = write_tiny_config(tmp / "out", "config.yaml", output_dir=tmp / "out", data_root=tmp / "data")
    return [str(path), *_cfg(tmp)[1:]]


def _weights_in_output(tmp):
    (tmp / "out").mkdir()
    _checkpoint(tmp).rename(tmp / "out" / "model_final.pth")
    return _cfg(tmp, f"model.backbone.weights={tmp / 'out' / 'model_final.pth'}") + ["--overwrite"]


def _trained(tmp, *overrides, voc=False):
    """Train one iteration (a checkpoint in tmp/out) and return the argv that resumes it with ``overrides``."""
    from detres.config import load_config
    from detres.tasks.detection import run_train

    import detres.tasks.common as common

    first = _voc_cfg(tmp, _voc(tmp), "data.classes=[cat,dog]") if voc else _cfg(tmp)
    cfg = load_config(first[0], first[1:])
    run_train(cfg, progress=False)  # the library of the checkout under test
    if hasattr(common, "release_run_lock"):  # this process goes on living: free output_dir for the tool's run
        common.release_run_lock(cfg.output_dir)
    return first + list(overrides) + ["solver.max_iter=2", "--resume"]


def _cls_root(tmp, empty_class=True):
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp / "inet" / split / c).mkdir(parents=True)
            if not (empty_class and split == "train" and c == "n02"):
                for name in ("a.png", "b.png"):  # two images: one batch of the training set
                    cv2.imwrite(str(tmp / "inet" / split / c / name), np.full((48, 48, 3), 90, np.uint8))
    return [str(ROOT / "configs" / "imagenet_r18.yaml"), f"data.root={tmp / 'inet'}", f"output_dir={tmp / 'out'}",
            "model.num_classes=2", "solver.max_iter=1", "solver.steps=[]", "solver.ims_per_batch=2",
            "solver.checkpoint_period=0", "test.eval_period=0", "test.ten_crop=false", "test.ims_per_batch=2",
            "data.crop=32", "data.min_scale=40", "data.max_scale=48", "data.test_resize=40", "data.num_workers=0",
            "--no-progress"]


def _cifar_bomb(tmp):
    """CIFAR batches whose array asks numpy for 32 TiB (each pickle is 200 bytes)."""
    reconstruct = np._core.multiarray._reconstruct

    class Huge:
        def __reduce__(self):
            return reconstruct, (np.ndarray, (0,), b"b"), (1, (1 << 42,), np.dtype(object), False, [0, 1])
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps({b"data": Huge(), b"labels": [0]}, protocol=2))
    return [str(ROOT / "configs" / "cifar10_resnet20.yaml"), f"data.root={tmp / 'cifar'}", f"output_dir={tmp / 'out'}",
            "--no-progress"]


def _check_data_case(tmp):
    argv = _case_truncated(tmp)
    (tmp / "voc" / "JPEGImages" / "000002.jpg").write_bytes(b"junk")
    return argv


def _object_blob(tmp):
    blobs = {"conv1_w": np.array([np.zeros((64, 3, 7, 7), np.float32), "x"], dtype=object)}
    path = tmp / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    return [str(path), str(tmp / "out.pth"), "--format", "caffe2"]


CASES += [
    # configs: duplicates, bombs, encodings, non-finite and oversized numbers, the wrong task, the device
    Case("YAML key given twice", "train_det", _dup_yaml, "error", "given twice"),
    Case("YAML alias bomb", "train_det", _bomb_yaml, "error", "aliases"),
    Case("YAML nested 50,000 deep", "train_det", lambda t: [str(_file(
        t, "deep.yaml", "solver:\n  steps: " + "[" * 50000 + "]" * 50000 + "\n"))], "error", "nested too deeply"),
    Case("config of 2 MiB", "train_det", lambda t: [str(_file(t, "big.yaml", "# " + "x" * (2 << 20) + "\n"))],
         "error", "too big"),
    Case("config in Latin-1", "train_det", lambda t: [str(_file(t, "latin.yaml", b"seed: 0  # caf\xe9\n"))],
         "error", "latin.yaml: not a text file in UTF-8"),
    Case("config in UTF-16 (accepted)", "train_det", _utf16_yaml, "ok", ""),
    Case("empty config file", "train_det", lambda t: [str(_file(t, "empty.yaml", "# nothing\n"))], "error", "no keys"),
    Case("NaN min_size", "train_det", lambda t: _cfg(t, "model.rpn.min_size=.nan"), "error", "model.rpn.min_size"),
    Case("infinite learning rate", "train_det", lambda t: _cfg(t, "solver.base_lr=.inf"), "error", "solver.base_lr"),
    Case("NaN gradient clip", "train_det", lambda t: _cfg(t, "solver.clip_grad_norm=.nan"), "error",
         "solver.clip_grad_norm"),
    Case("seed beyond 64 bits", "train_det", lambda t: _cfg(t, "seed=123456789012345678901234567890"), "error", "seed"),
    Case("image that cannot be allocated", "train_det", lambda t: _cfg(t, "data.shapes.image_size=1000000"), "error",
         "data.shapes.image_size"),
    Case("backbone width that cannot be allocated", "train_det", lambda t: _cfg(t, "model.backbone.width=1000000"),
         "error", "model.backbone.width"),
    Case("classification config to train_det", "train_det", lambda t: [str(_file(
        t, "cls.yaml", "task: classification\nmodel:\n  name: resnet18\n"))], "error", "tools/train_cls.py"),
    Case("detection config to train_cls", "train_cls", lambda t: _cfg(t), "error", "tools/train_det.py"),
    Case("train_cls --time-step --steps 0", "train_cls", lambda t: [str(ROOT / "configs" / "imagenet_r18.yaml"),
                                                                     "--time-step", "--steps", "0"], "error", "--steps"),
    Case("--device gpu", "train_det", lambda t: _cfg(t) + ["--device", "gpu"], "error", "--device"),
    Case("--device cuda:9", "train_det", lambda t: _cfg(t) + ["--device", "cuda:9"], "error", "--device cuda:9"),
    Case("step beyond max_iter", "train_det", lambda t: _cfg(t, "solver.steps=[50]"), "warning", "never take effect"),
    # the user's files and other runs
    Case("earlier results without checkpoints", "train_det", _earlier_results_no_ckpt, "error", "eval.json"),
    Case("output_dir locked by a live run", "train_det", lambda t: _lock(t, 1), "error", "another run"),
    Case("stale lock taken over", "train_det", lambda t: _lock(t, _dead_pid()), "warning", "taking over"),
    Case("config file is output_dir/config.yaml", "train_det", _config_in_output, "error", "config.yaml"),
    Case("output_dir is a file", "train_det", lambda t: _cfg(t, f"output_dir={_file(t, 'out.txt', 'notes')}"), "error",
         "out.txt"),
    Case("--overwrite would delete the weights", "train_det", _weights_in_output, "error", "model_final.pth"),
    # resume
    Case("resume with reordered classes", "train_det", lambda t: _trained(t, "data.classes=[dog,cat]", voc=True), "error",
         "another order"),
    Case("resume with another width", "train_det", lambda t: _trained(t, "model.backbone.width=32"), "error",
         "model.backbone.width: 64 -> 32"),
    # data and files
    Case("ImageNet class folder without images", "train_cls", _cls_root, "error", "n02"),
    Case("CIFAR pickle asking for 4 TiB", "train_cls", _cifar_bomb, "error", "data_batch_1"),
    Case("Caffe2 pkl with an object array", "convert_weights", _object_blob, "error", "conv1_w"),
    Case("checkpoint with a flipped bit, no .sha256", "eval", lambda t: _eval_ckpt(t, _flip_ckpt), "error", "CRC-32"),
    Case("diverged run", "train_det", lambda t: _cfg(t, "solver.max_iter=6", "solver.base_lr=1e6", "solver.warmup_iters=0",
                                                       "solver.clip_grad_norm=null"), "failure", "non-finite"),
    Case("check_data: truncated and junk images", "check_data", _check_data_case, "error", "4 problem(s)"),
    Case("check_data: data folder missing", "check_data", lambda t: _cfg(t, "data.dataset=voc", f"data.root={t / 'none'}"),
         "error", "problem(s)"),
    Case("train_det --check-data: truncated and junk images", "train_det", lambda t: _check_data_case(t) + ["--check-data"],
         "error", "4 problem(s)"),
]


# --------------------------------------------------------------------------------------------------
# third pass (issue 26): the last inputs that ended in a traceback, ran for minutes or did not say where
# --------------------------------------------------------------------------------------------------
def _cifar_shared(tmp):
    """CIFAR batches of 400 bytes whose shared references expand to 10^13 list entries when walked."""
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = [0] * 10
    for _ in range(12):
        rows = [rows] * 10
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps({b"data": rows, b"labels": [0]}, protocol=2))
    return [str(ROOT / "configs" / "cifar10_resnet20.yaml"), f"data.root={tmp / 'cifar'}", f"output_dir={tmp / 'out'}",
            "--no-progress"]


def _coco_gt_three_numbers(tmp):
    """A ground-truth box [x, y, w] and a detection exactly where [x, y, w, w] would be."""
    image_dir, ann, data = write_coco(tmp, degenerate=False)
    first = data["annotations"][0]
    first["bbox"] = first["bbox"][:3]
    ann.write_text(json.dumps(data))
    det = {"image_id": first["image_id"], "category_id": first["category_id"], "bbox": first["bbox"] + first["bbox"][2:],
           "score": 0.9}
    (tmp / "dets.json").write_text(json.dumps([det]))
    return ["--dataset", "coco", "--results", str(tmp / "dets.json"), "--ann-file", str(ann)]


def _cls_run_folder(tmp):
    run = tmp / "cls_run"
    run.mkdir()
    (run / "config.yaml").write_text("task: classification\nmodel:\n  name: resnet18\n")
    _image(tmp)
    return [str(run), str(tmp / "a.jpg")]


def _study_bad_eval_json(tmp):
    run = _cls_run_folder(tmp)[0]
    (pathlib.Path(run) / "eval.json").write_text("{'top1_error_center': 0.1}")
    return ["table", run]


def _degenerate_voc(tmp):
    return _voc_cfg(tmp, _voc(tmp, {"000001": {"size": (64, 48), "objects": [("cat", 5, 5, 40, 40, 0),
                                                                               ("dog", 20, 20, 20, 20, 0)]},
                                    "000002": {"size": (64, 48), "objects": [("dog", 10, 10, 30.5, 10.5, 0)]}}))


CASES += [
    Case("CIFAR pickle of shared references", "train_cls", _cifar_shared, "error", "data_batch_1: unsafe pickle"),
    Case("COCO ground truth bbox of three numbers", "eval", _coco_gt_three_numbers, "error",
         "bbox must be 4 finite numbers"),
    Case("predict: a classification run folder", "predict", _cls_run_folder, "error", "cls_run/config.yaml"),
    Case("model_stats: detector size 0", "model_stats", lambda t: ["--backbones", "resnet18", "--detector-size", "0", "0"],
         "error", "--detector-size: must be >= 1"),
    Case("benchmark: --repeats 0", "benchmark", lambda t: ["voc-eval", "--repeats", "0"], "error", "--repeats: must be >= 1"),
    Case("study: eval.json not JSON", "study", _study_bad_eval_json, "error", "eval.json: not valid JSON"),
    Case("training set without images", "train_det", lambda t: _coco_cfg(t, lambda d: d["annotations"].clear()), "error",
         "instances_train.json has no training images"),
    Case("VOC boxes xmin = xmax and sub-pixel", "train_det", _degenerate_voc, "warning",
         "000001.xml: object 2 (dog) is less than 1 px across"),
    Case("check_data: VOC boxes xmin = xmax and sub-pixel", "check_data", _degenerate_voc, "error", "4 problem(s)"),
]


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
    if case.expect in ("error", "failure"):  # a user error (exit 2) or a run that failed, e.g. diverged (exit 1)
        lines = [ln for ln in out.err.splitlines() if ln.startswith("error: ")]
        assert code == (2 if case.expect == "error" else 1), out.err[-2000:]
        assert len(lines) == 1 and case.needle in lines[0], out.err[-2000:]
    elif case.expect == "ok":
        assert code == 0, out.err[-2000:]
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
def _classify(repo: pathlib.Path, only: str | None = None) -> list[tuple[str, str]]:
    import os
    import subprocess
    import tempfile

    rows = []
    for case in CASES:
        if only is not None and only not in case.name:
            continue
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
            elif case.expect == "ok":
                kind = "accepted" if p.returncode == 0 else "wrongly refused"
            elif p.returncode != 0 and errors and case.needle in errors[-1]:
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
    parser.add_argument("--only", default=None, help="only the cases whose name contains this text")
    args = parser.parse_args()
    rows = _classify(pathlib.Path(args.repo).resolve(), args.only)
    for name, kind in rows:
        print(f"{kind:14s} {name}")
    print(dict(collections.Counter(k for _, k in rows)), f"({len(rows)} cases)")


# --------------------------------------------------------------------------------------------------
# third pass (issue 26): overrides and flags in any order
# --------------------------------------------------------------------------------------------------
def _override_tools() -> dict[str, tuple]:
    """{tool: (its parser, the dest of its ``key=value`` positional)} for every tool taking overrides."""
    found = {}
    for path in sorted((ROOT / "tools").glob("*.py")):
        parser = _tool(path.stem).build_parser()
        for action in parser._actions:  # noqa: SLF001 - the parser's own list of arguments
            if not action.option_strings and action.nargs == "*" and action.dest in ("overrides", "opts"):
                found[path.stem] = (parser, action.dest)
    return found


def test_every_tool_taking_overrides_accepts_them_after_flags(monkeypatch):
    """``tools/train_det.py CONFIG --resume solver.max_iter=1000``: the overrides before, between and after the
    flags all arrive, for every tool with a ``key=value`` positional (argparse alone stops at the first flag)."""
    tools = _override_tools()
    assert {"train_det", "train_cls", "eval", "check_data", "recompute_bn"} <= set(tools)
    for name, (parser, dest) in tools.items():
        lead = []
        for group in parser._mutually_exclusive_groups:  # noqa: SLF001 - tools/eval.py's required mode
            if group.required:
                lead += [group._group_actions[0].option_strings[0], "c.yaml"]  # noqa: SLF001
        for a in parser._actions:  # noqa: SLF001 - positionals (the config) and required options get a value
            if (not a.option_strings and a.dest != dest and a.nargs is None) or (a.option_strings and a.required):
                lead += [*a.option_strings[:1], "1"]
        seen = []
        module = _tool(name)
        monkeypatch.setattr(module, "run", lambda args: seen.append(args) or 0)
        code = module.main([*lead, "solver.a=1", "--debug", "solver.b=2", "--debug", "solver.c=3"])
        assert code == 0 and len(seen) == 1, name
        assert getattr(seen[0], dest) == ["solver.a=1", "solver.b=2", "solver.c=3"] and seen[0].debug, name


def test_ctrl_c_during_a_checkpoint_write_is_one_line_and_cuts_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C while torch.save writes (it turned the interruption into ``RuntimeError: ... unexpected pos``):
    the checkpoint, its sha256 and last_checkpoint are written, then the tool ends with one line and exit code
    130; a second Ctrl-C stops the write at once and leaves the previous checkpoint as it was."""
    import argparse
    import os
    import signal

    import torch

    from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint, save_checkpoint
    from detres.utils.cli import run_tool

    real_save = torch.save

    class Pressing:  # the file torch.save's writer sees: Ctrl-C pressed `presses` times at its 3rd write
        def __init__(self, f, presses):
            self.f, self.presses, self.writes = f, presses, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                for _ in range(self.presses):
                    os.kill(os.getpid(), signal.SIGINT)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    save_checkpoint({"model": {"w": torch.zeros(3)}, "iteration": 1}, str(tmp_path / "model_0000001.pth"))
    big = {f"t{i}": torch.full((50_000,), float(i)) for i in range(40)}
    for presses, name in ((2, "model_0000002.pth"), (1, "model_0000003.pth")):
        monkeypatch.setattr(torch, "save", lambda obj, f, n=presses: real_save(obj, Pressing(f, n)))
        code = run_tool(argparse.ArgumentParser(), lambda a, p=str(tmp_path / name): save_checkpoint(
            {"model": big, "iteration": 2}, p), [])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 130 and err == ["error: interrupted"], err
        assert not list(tmp_path.glob("*.tmp.*"))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the second press stopped the first write: model_0000002 was never written, last_checkpoint kept
    # pointing at model_0000001 until the one-press write of model_0000003 finished with its sha256
    assert not (tmp_path / "model_0000002.pth").exists()
    last = find_last_checkpoint(str(tmp_path))
    assert last == str(tmp_path / "model_0000003.pth")
    assert torch.equal(load_checkpoint(last)["model"]["t7"], big["t7"])  # whole, and its sha256 matches
