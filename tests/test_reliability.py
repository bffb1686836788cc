"""The second reliability pass, unit by unit: config parsing bounds, image decoding by scaling, the pickle
size guard, checkpoint CRCs, the run lock, output-folder protection, resume checks, --device, check_data and
how a tool ends on divergence. (tests/test_bad_inputs.py drives the same through the tools.)"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import pickle
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detres.config import ClsConfig, DetConfig, list_config_keys, load_config


def _write(path, text):
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------
def test_duplicate_key_names_both_lines(tmp_path):
    p = _write(tmp_path / "c.yaml", "solver:\n  base_lr: 0.1\n  max_iter: 5\n  base_lr: 0.2\n")
    with pytest.raises(ValueError, match=r"c.yaml: key 'base_lr' is given twice, at lines 2 and 4"):
        load_config(p)
    # the same key in two different mappings is fine
    cfg = load_config(_write(tmp_path / "d.yaml", "solver:\n  max_iter: 5\n  steps: []\ntest:\n  ims_per_batch: 3\n"))
    assert (cfg.solver.max_iter, cfg.test.ims_per_batch) == (5, 3)


def test_yaml_is_bounded_before_it_is_built(tmp_path):
    many = "".join(f"k{i}: &a{i} 1\n" for i in range(101)) + "x: [" + ", ".join(f"*a{i}" for i in range(101)) + "]\n"
    with pytest.raises(ValueError, match="more than 100 aliases"):
        load_config(_write(tmp_path / "many.yaml", many))
    levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb.yaml: its aliases expand to 1234571 values"):
        load_config(_write(tmp_path / "bomb.yaml", f"solver:\n  steps: [{', '.join(levels)}]\n"))
    assert time.perf_counter() - t < 5
    (tmp_path / "deep.yaml").write_text("solver:\n  steps: " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(ValueError, match="deep.yaml: lists or mappings nested too deeply"):
        load_config(tmp_path / "deep.yaml")
    with pytest.raises(ValueError, match="override 'solver.steps=...': lists or mappings nested too deeply"):
        load_config(_write(tmp_path / "c.yaml", ""), ["solver.steps=" + "[" * 50000 + "]" * 50000])
    (tmp_path / "big.yaml").write_text("#" * ((1 << 20) + 1))
    with pytest.raises(ValueError, match="too big for a config file"):
        load_config(tmp_path / "big.yaml")


def test_encodings(tmp_path):
    text = "solver:\n  base_lr: 0.25\n"
    for enc in ("utf-16", "utf-8-sig", "utf-32"):
        (tmp_path / f"{enc}.yaml").write_bytes(text.encode(enc))
        assert load_config(tmp_path / f"{enc}.yaml").solver.base_lr == 0.25
    (tmp_path / "latin.yaml").write_bytes("seed: 1  # café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.yaml: not a text file in UTF-8 \(byte 0xe9 at offset 14"):
        load_config(tmp_path / "latin.yaml")


def _numeric_keys(schema) -> list[tuple[str, type]]:
    """(dotted key, float or int) for every key whose type is, holds or lists a number."""
    out = []
    for key in list_config_keys(schema):
        obj, tp = schema, None
        for part in key.split("."):
            tp = typing.get_type_hints(obj)[part]
            obj = tp
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        base = typing.get_args(inner[0])[0] if typing.get_origin(inner[0]) is list else inner[0]
        if base in (int, float):
            out.append((key, base, typing.get_origin(inner[0]) is list))
    return out


@pytest.mark.parametrize("schema", [DetConfig, ClsConfig])
def test_every_numeric_key_refuses_nan_and_inf(tmp_path, schema):
    path = _write(tmp_path / "c.yaml", "")
    keys = _numeric_keys(schema)
    assert len(keys) > (40 if schema is DetConfig else 25)  # the walk found the keys
    for key, base, is_list in keys:
        for bad in (".nan", ".inf", "-.inf"):
            value = f"[{bad}]" if is_list else bad
            with pytest.raises(ValueError, match=rf"config key '{key}(\[0\])?'"):
                load_config(path, [f"{key}={value}"], schema=schema)


def test_integers_bounded_and_sizes_capped(tmp_path):
    path = _write(tmp_path / "c.yaml", "")
    with pytest.raises(ValueError, match="config key 'solver.max_iter': 1180591620717411303424 is too large"):
        load_config(path, [f"solver.max_iter={2 ** 70}"])
    with pytest.raises(ValueError, match="config key 'seed': must be in"):
        load_config(path, [f"seed={2 ** 40}"])
    for key in ("data.min_size", "data.max_size"):
        with pytest.raises(ValueError, match=f"config key '{key}': must be in \\[1, 16384\\]"):
            load_config(path, [f"{key}=100000", "data.max_size=100000"] if key == "data.min_size" else [f"{key}=100000"])


def test_steps_past_max_iter_are_dropped_with_one_warning(tmp_path, caplog):
    path = _write(tmp_path / "c.yaml", "")
    with caplog.at_level(logging.WARNING, logger="detres"):
        cfg = load_config(path, ["solver.max_iter=10", "solver.steps=[3,10,20]"])
    assert cfg.solver.steps == [3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "[10, 20]" in warnings[0] and "max_iter=10" in warnings[0]
    with pytest.raises(ValueError, match="solver.steps"):
        load_config(path, ["solver.steps=[0,5]"])


def test_wrong_task_and_empty_file(tmp_path):
    cls = _write(tmp_path / "cls.yaml", "task: classification\n")
    with pytest.raises(ValueError, match="use tools/train_cls.py"):
        load_config(cls, task="detection")
    det_keys = _write(tmp_path / "det.yaml", "model:\n  backbone:\n    name: resnet18\n")
    with pytest.raises(ValueError, match="keys are those of a 'detection' config.*tools/train_det.py"):
        load_config(det_keys, schema=ClsConfig, task="classification")
    empty = _write(tmp_path / "e.yaml", "# only a comment\n")
    assert load_config(empty) == DetConfig()  # the library still reads it
    with pytest.raises(ValueError, match="e.yaml: the config file has no keys"):
        load_config(empty, allow_empty=False)


# --------------------------------------------------------------------------------------------------
# images, pickles, checkpoints, weights
# --------------------------------------------------------------------------------------------------
def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    from detres.data.imagenet import read_image
    from detres.data.transforms import read_image_rgb

    grey = np.array([[0, 257, 257 * 100, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    rgb = read_image_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 100, 255] and (rgb[..., 0] == rgb[..., 2]).all()
    assert read_image(tmp_path / "g16.png")[0, 0].tolist() == [0, 1, 100, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), mode="F").save(tmp_path / "f.tif")
    assert read_image_rgb(tmp_path / "f.tif")[0, :, 1].tolist() == [0, 128, 255, 255]
    eight = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
    Image.fromarray(eight).save(tmp_path / "rgb.png")
    assert (read_image_rgb(tmp_path / "rgb.png") == eight).all()  # 8-bit images are untouched


def _reconstructing(shape, dtype, data):
    reconstruct = np._core.multiarray._reconstruct

    class Crafted:
        def __reduce__(self):
            return reconstruct, (np.ndarray, (0,), b"b"), (1, shape, np.dtype(dtype), False, data)
    return pickle.dumps({"x": Crafted()}, protocol=2)


def test_pickles_may_not_ask_for_more_than_their_file_holds(tmp_path):
    from detres.utils.io import safe_load_pickle

    (tmp_path / "bomb.pkl").write_bytes(_reconstructing((1 << 42,), object, [1, 2]))
    with pytest.raises(ValueError, match=r"bomb.pkl: unsafe pickle: an array of shape \(4398046511104,\) cannot "
                                         r"come from a file of \d+ bytes"):
        safe_load_pickle(tmp_path / "bomb.pkl")
    good = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.zeros(2, np.int64)],
            "o": np.array([np.ones(2), "x"], dtype=object)}
    for proto in (2, 4, 5):
        (tmp_path / "g.pkl").write_bytes(pickle.dumps(good, protocol=proto))
        back = safe_load_pickle(tmp_path / "g.pkl")
        assert type(back["a"]) is np.ndarray and (back["a"] == good["a"]).all()
        assert type(back["b"][0]) is np.ndarray and type(back["o"][0]) is np.ndarray and back["o"][1] == "x"


def _flip(path, member_fraction=0.5):
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start + int(info.file_size * member_fraction)] ^= 0x01
    path.write_bytes(bytes(data))
    return info.filename


def test_checkpoint_without_sidecar_is_checked_by_its_crcs(tmp_path):
    from detres.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    state = {"model": {"w": torch.arange(4096, dtype=torch.float32)}, "iteration": 3}
    save_checkpoint(state, str(tmp_path / "a.pth"))
    (tmp_path / "copy.pth").write_bytes((tmp_path / "a.pth").read_bytes())  # copied without its .sha256
    assert torch.equal(load_checkpoint(str(tmp_path / "copy.pth"))["model"]["w"], state["model"]["w"])
    member = _flip(tmp_path / "copy.pth")
    with pytest.raises(CheckpointError, match=rf"copy.pth: damaged file: the data of '{member}' does not match its CRC-32"):
        load_checkpoint(str(tmp_path / "copy.pth"))
    assert load_checkpoint(str(tmp_path / "copy.pth"), verify=False)["iteration"] == 3  # torch itself does not check
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # no CRCs: loads as before
    assert load_checkpoint(str(tmp_path / "legacy.pth"))["iteration"] == 3


def test_object_and_nan_blobs_are_refused():
    from detres.backbones.convert import convert_caffe2_resnet

    with pytest.raises(ValueError, match=r"key 'conv1_w': expected an array of numbers, found dtype object"):
        convert_caffe2_resnet({"conv1_w": np.array([np.zeros(3), "x"], dtype=object)})
    with pytest.raises(ValueError, match="key 'conv1_w': holds NaN"):
        convert_caffe2_resnet({"conv1_w": np.full((64, 3, 7, 7), np.nan, np.float32)})


def test_empty_class_folder_is_an_error(tmp_path):
    from detres.data.imagenet import ImageNetFolder

    for c in ("a", "b", "c"):
        (tmp_path / "train" / c).mkdir(parents=True)
    for c in ("a", "c"):
        cv2.imwrite(str(tmp_path / "train" / c / "x.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"train: class folder\(s\) without images .*\['b'\]"):
        ImageNetFolder(tmp_path / "train")
    (tmp_path / "train" / "b" / "notes.txt").write_text("no image here")
    with pytest.raises(ValueError, match=r"\['b'\]"):
        ImageNetFolder(tmp_path / "train")
    cv2.imwrite(str(tmp_path / "train" / "b" / "y.jpg"), np.zeros((4, 4, 3), np.uint8))
    assert [label for _, label in ImageNetFolder(tmp_path / "train").samples] == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# output folders, locks, resume
# --------------------------------------------------------------------------------------------------
def test_run_lock(tmp_path, caplog):
    from detres.tasks.common import LOCK_FILE, acquire_run_lock, release_run_lock

    out = tmp_path / "run"
    path = acquire_run_lock(out)
    info = json.loads(path.read_text())
    assert info["pid"] > 0 and info["host"] == socket.gethostname() and path.name == LOCK_FILE
    assert acquire_run_lock(out) == path  # this process's own lock: kept
    release_run_lock(out)
    assert not path.exists()
    # a live run (pid 1 started long before the lock) is refused
    path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "time": time.time(), "started": "today"}))
    with pytest.raises(ValueError, match=r"another run is using this output_dir \(pid 1 on"):
        acquire_run_lock(out)
    # so is a run on another machine (its pid cannot be checked from here)
    path.write_text(json.dumps({"pid": 12345, "host": "elsewhere", "time": time.time(), "started": "today"}))
    with pytest.raises(ValueError, match="it runs on another machine"):
        acquire_run_lock(out)
    # a run whose process is gone: taken over, with a warning
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    path.write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "time": time.time(), "started": "x"}))
    with caplog.at_level(logging.WARNING, logger="detres"):
        acquire_run_lock(out)
    assert json.loads(path.read_text())["pid"] != p.pid and "taking over the lock" in caplog.text
    # a reused pid: the process running under it started after the lock was taken
    release_run_lock(out)
    path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "time": 0.0, "started": "1970"}))
    acquire_run_lock(out)
    release_run_lock(out)


def test_run_lock_held_by_a_running_process_then_killed(tmp_path, caplog):
    from detres.tasks.common import acquire_run_lock, release_run_lock

    code = ("import sys, time; from detres.tasks.common import acquire_run_lock; acquire_run_lock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"another run is using this output_dir \(pid {p.pid} on"):
            acquire_run_lock(tmp_path / "r")
    finally:
        p.kill()  # no exit handler runs: the lock file stays, naming a process that is gone
        p.wait()
    with caplog.at_level(logging.WARNING, logger="detres"):
        acquire_run_lock(tmp_path / "r")
    assert f"taking over the lock of a run that is gone (pid {p.pid}" in caplog.text
    release_run_lock(tmp_path / "r")
    assert not (tmp_path / "r" / "run.lock").exists()


def test_run_lock_is_released_when_the_process_ends(tmp_path):
    code = ("import sys; from detres.tasks.common import acquire_run_lock; acquire_run_lock(sys.argv[1]); "
            "print(open(sys.argv[1] + '/run.lock').read())")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True, check=True)
    assert json.loads(p.stdout)["pid"] > 0  # it was held while the process ran ...
    assert not (tmp_path / "r" / "run.lock").exists()  # ... and is gone after it


def test_fresh_run_refuses_results_but_replaces_a_failed_start(tmp_path):
    from detres.tasks.common import prepare_output_dir

    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "events.out.tfevents.1.host"):
        (out / name).write_text("" if name == "metrics.jsonl" else "x")
    (out / "vis").mkdir()
    (out / "notes.md").write_text("the user's")
    prepare_output_dir(str(out), resume=False, overwrite=False)  # a run that failed at its start: replaced
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]
    for name in ("eval.json", "metrics.jsonl", "pr_curves.png", "training_curves.png", "vis/a.png", "results/x.txt"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("{}")
        with pytest.raises(ValueError, match=f"holds an earlier run's files \\({name.split('/')[0]}"):
            prepare_output_dir(str(out), resume=False, overwrite=False)
        prepare_output_dir(str(out), resume=False, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == ["notes.md"]


def test_inputs_inside_output_dir(tmp_path):
    from detres.tasks.common import check_output_dir

    cfg = DetConfig()
    cfg.output_dir = str(tmp_path / "run")
    check_output_dir(cfg, inputs=[tmp_path / "cfg.yaml"])
    own = tmp_path / "run" / "config.yaml"
    with pytest.raises(ValueError, match="the run would overwrite config.yaml, which it reads"):
        check_output_dir(cfg, inputs=[own])
    check_output_dir(cfg, inputs=[own], resume=True)  # a run resumed from its own saved config
    check_output_dir(cfg, inputs=[own], overwrite=True)  # or redone from it
    cfg.model.backbone.weights = str(tmp_path / "run" / "model_0000100.pth")
    check_output_dir(cfg, resume=True)
    with pytest.raises(ValueError, match=r"--overwrite would delete model_0000100.pth, which the run reads"):
        check_output_dir(cfg, overwrite=True)
    cfg.model.backbone.weights = str(tmp_path / "run" / "imagenet.pth")  # not a name a run writes
    check_output_dir(cfg, overwrite=True)
    cfg.data.root = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"is the data folder \(data.root\)"):
        check_output_dir(cfg)


def test_resume_checks_classes_and_shapes():
    from detres.tasks.common import check_resume_fits

    cfg = DetConfig()
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "class_names": ["cat", "dog", "cow"],
             "config": {"model": {"backbone": {"width": 64}}}}
    check_resume_fits(model, state, cfg, source="ck.pth", class_names=["cat", "dog", "cow"])
    with pytest.raises(ValueError, match=r"ck.pth was trained on other classes: the same classes in another order, "
                                         r"so labels would be swapped \(label of dog 2->1, cat 1->2\)"):
        check_resume_fits(model, state, cfg, source="ck.pth", class_names=["dog", "cat", "cow"])
    with pytest.raises(ValueError, match=r"3 -> 4 classes \(added \['bird'\]\)"):
        check_resume_fits(model, state, cfg, source="ck.pth", class_names=["cat", "dog", "cow", "bird"])
    cfg.model.backbone.width = 32
    with pytest.raises(ValueError, match=r"another model \(model.backbone.width: 64 -> 32; weight is \[2, 3\] in the "
                                         r"checkpoint, \[4, 3\] now\)"):
        check_resume_fits(torch.nn.Linear(3, 4), state, cfg, source="ck.pth")


# --------------------------------------------------------------------------------------------------
# tools: --device, divergence, check_data
# --------------------------------------------------------------------------------------------------
def test_device_spelling():
    from detres.utils.cli import check_device

    assert check_device("cpu") == "cpu" and check_device(None) is None
    for bad in ("gpu", "cuda0", "CPU", "mps", "cuda:x", ""):
        with pytest.raises(ValueError, match="must be cpu, cuda or cuda:N"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="GPU"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_divergence_and_memory_end_in_one_line(capsys):
    from detres.utils.cli import run_tool

    def diverge(args):
        raise FloatingPointError("non-finite loss at iteration 7: loss_cls=nan. Training stopped; last good "
                                 "checkpoint: out/model_0000005.pth. Try a lower solver.base_lr.")
    assert run_tool(argparse.ArgumentParser(), diverge, []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: non-finite loss at iteration 7") and "--resume" in err[0]
    assert err[0].count("Try ") == 1  # the trainer's own advice, not a second one

    def no_memory(args):
        raise MemoryError("Unable to allocate 4.00 TiB")
    assert run_tool(argparse.ArgumentParser(), no_memory, []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory: Unable to allocate 4.00 TiB")
    with pytest.raises(FloatingPointError):
        run_tool(argparse.ArgumentParser(), diverge, ["--debug"])


class _Items:
    class_names = ("cat", "dog")
    ids = ["a", "b", "c", "d", "e"]
    transforms = None

    def __init__(self):
        good = np.zeros((8, 8, 3), np.uint8)
        self.items = [
            (good, {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([2])}),
            (good, {"boxes": torch.tensor([[1.0, float("nan"), 5, 5]]), "labels": torch.tensor([1])}),
            (good, {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([3])}),
            (good.astype(np.float32), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}),
            None,
        ]

    def __len__(self):
        return len(self.items)

    def load(self, i):
        if self.items[i] is None:
            raise ValueError("e.jpg: cannot decode image (truncated)")
        return self.items[i]


def test_check_detection_item():
    from detres.tasks.check_data import check_detection_item

    ds = _Items()
    found = [check_detection_item(ds, i) for i in range(len(ds))]
    assert found[0] == []
    assert found[1] == ["item 1 (image id 'b'): a box has a NaN or infinite coordinate"]
    assert found[2] == ["item 2 (image id 'c'): label 3 outside 1..2"]
    assert found[3][0].startswith("item 3 (image id 'd'): the image is not HWC uint8 RGB")
    assert found[4] == ["e.jpg: cannot decode image (truncated)"]


def test_check_data_tool_on_good_data(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parent))
    from _engine_helpers import write_tiny_config

    spec = importlib.util.spec_from_file_location("_check_data_tool", Path(__file__).parents[1] / "tools" / "check_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(write_tiny_config(tmp_path)), "--workers", "2"]) == 0
    assert "is fine" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # checking writes no run folder


def test_check_data_covers_a_classification_folder(tmp_path):
    from detres.tasks.check_data import check_data

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / split / c / "x.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "val" / "b" / "bad.png").write_bytes(b"\x89PNG not really")
    cfg = load_config(_write(tmp_path / "c.yaml", "task: classification\n"),
                      [f"data.root={tmp_path}", "model.num_classes=2", "data.crop=8", "data.min_scale=8",
                       "data.max_scale=8", "data.test_resize=8"])
    problems = check_data(cfg, workers=2)
    assert len(problems) == 1 and problems[0][0] == "test" and "bad.png: cannot decode image" in problems[0][1]



def test_predictor_scales_a_16_bit_pil_image_instead_of_clipping():
    """detres.Predictor's PIL input path: a 16-bit grey image at half range becomes mid-grey, not white."""
    import numpy as np
    from PIL import Image

    from detres.tasks.predictor import as_rgb_array

    im = Image.fromarray(np.full((4, 5), 32768, np.uint16))
    rgb = as_rgb_array(im)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert int(rgb[0, 0, 0]) == 128  # 32768 / 65535 * 255 (np.array(im.convert("RGB")) gives 255)


def test_eval_refuses_a_device_name_torch_would_read_otherwise(tmp_path):
    import pytest

    from detres.config import load_config
    from detres.tasks.detection import run_eval

    cfg = load_config("configs/demo_shapes.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="gpu"):
        run_eval(cfg, str(tmp_path / "missing.pth"), device="gpu")


def test_cpu_bf16_is_one_policy_in_utils_amp(monkeypatch):
    """Training's amp setting never runs bf16 on a CPU; the fast inference path's opt-in does, and only on a CPU
    with native bf16 (the rule lives in utils/amp, which the fast path now uses instead of its own autocast)."""
    import torch

    import detres.utils.amp as amp

    assert amp.effective_amp("bf16", "cpu") is None
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert amp.effective_amp("bf16", "cpu", cpu_bf16=True) == "bf16"
    assert amp.effective_amp("fp16", "cpu", cpu_bf16=True) is None
    ctx = amp.autocast("bf16", "cpu", cpu_bf16=True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cpu"
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert amp.effective_amp("bf16", "cpu", cpu_bf16=True) is None
