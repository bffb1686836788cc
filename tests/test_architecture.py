"""ARCHITECTURE.md's rules that the layer test cannot see, checked on the source (ast):

- who reads the config: only ``detres/tasks/`` (and ``detres/config.py`` itself); the tools and the
  benchmarks get a config from :func:`detres.tasks.common.read_config` and hand it on without reading it;
- who writes files: ``detres/utils/io.py`` (the atomic write); the few other writers are listed with why;
- every default once: the fast path's options are the config's ``test.fast`` defaults.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from detres.config import ClsConfig, DetConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "detres").rglob("*.py"), *(ROOT / "tools").glob("*.py")])


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------------------------------
# who reads the config
# --------------------------------------------------------------------------------------------------
#: what only tasks/ may import from detres.config: the loaders and the two whole schemas (the section
#: dataclasses, e.g. ``BackboneConfig``, stay importable: modeling reads its default values from them)
CONFIG_ENTRIES = {"load_config", "DetConfig", "ClsConfig", "CONFIG_SCHEMAS", "apply_overrides", "config_from_dict",
                  "load_yaml_with_base", "validate_config"}
#: the top-level fields of both schemas: ``cfg.solver``, ``config.output_dir``, ``self.cfg.data``, ...
SECTIONS = {f.name for schema in (DetConfig, ClsConfig) for f in dataclasses.fields(schema)}
CONFIG_NAMES = {"cfg", "config"}


def config_reads(source: str) -> list[str]:
    """Where ``source`` reads a config: imports of :data:`CONFIG_ENTRIES`, calls of ``load_config`` and
    ``cfg.<section>`` / ``config.<section>`` / ``<x>.cfg.<section>`` attribute reads, as "line N: what"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "detres.config":
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name in CONFIG_ENTRIES]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "load_config":
                found.append(f"line {node.lineno}: calls load_config")
        elif isinstance(node, ast.Attribute) and node.attr in SECTIONS:
            base = node.value
            base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            if base_name in CONFIG_NAMES:
                found.append(f"line {node.lineno}: reads {base_name}.{node.attr}")
    return sorted(found, key=lambda f: int(f.split(":")[0].split()[1]))


def test_the_config_check_finds_each_kind_of_read():
    src = ("from detres.config import DetConfig, BackboneConfig\n"
           "cfg = load_config('a.yaml')\n"
           "lr = cfg.solver.base_lr\n"
           "root = self.cfg.data.root\n"
           "out = config.output_dir\n"
           "trunk = model.backbone\n"       # a detector's module, not a config
           "d = run.config.get('data')\n")  # a run's config.yaml as a plain dict (evaluation/compare.py)
    assert config_reads(src) == ["line 1: imports DetConfig", "line 2: calls load_config",
                                 "line 3: reads cfg.solver", "line 4: reads cfg.data", "line 5: reads config.output_dir"]


@pytest.mark.parametrize("path", [p for p in SOURCES if not _rel(p).startswith("detres/tasks/")
                                  and _rel(p) != "detres/config.py"], ids=_rel)
def test_only_tasks_read_the_config(path):
    reads = config_reads(path.read_text(encoding="utf-8"))
    assert not reads, (f"{_rel(path)} reads the config ({'; '.join(reads)}): only detres/tasks/ does (ARCHITECTURE.md "
                       "'Who reads the config'); move it into a tasks function and pass plain values")


# --------------------------------------------------------------------------------------------------
# who writes files
# --------------------------------------------------------------------------------------------------
#: modules that write files otherwise than through detres/utils/io.py, and why
WRITERS = {
    "detres/utils/io.py": "the atomic write itself (temporary file, fsync, os.replace)",
    "detres/tasks/common.py": "run.lock is created in place with os.open and held with flock while a run owns the "
                              "folder (a lock must stay one inode; a rename would hand out a second lock)",
    "detres/engine/logging.py": "metrics.jsonl and log.txt are appended line by line during a run (a stream, not "
                                "a file replaced whole)",
    "detres/data/shapes.py": "generates the synthetic VOC tree; its manifest, written last, marks the tree complete "
                             "and an incomplete tree is generated again",
    "detres/data/cifar.py": "writes CIFAR-10 files in the official formats for tests (data/ is not this rule's "
                            "owner's; a synthetic copy)",
    "detres/benchmarks/synthetic.py": "synthetic annotation trees of train2017/VOC07+12 size in scratch folders: "
                                      "an fsync per file would time the disk, not the code",
    "detres/utils/download.py": "downloads stream into <file>.part (appended to when a download resumes, so not a "
                                "whole-file atomic write), renamed into place with os.replace once checked; the "
                                "lock file beside the target is created with os.open and held with flock",
    "detres/benchmarks/scale.py": "full-size synthetic JPEGs and image sets in scratch folders (as synthetic.py)",
}


#: ``<module>.open(path, mode)``: the mode is the second argument (``Path.open(mode)``: the first)
MODULE_OPENS = {"io", "gzip", "bz2", "lzma", "tarfile", "codecs", "builtins"}


def _mode(call: ast.Call) -> str | None:
    """The mode of an ``open(path, mode)`` / ``module.open(path, mode)`` / ``path.open(mode)`` call when it is a
    literal mode string (else None)."""
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        func = call.func
        pos = 0 if isinstance(func, ast.Attribute) and not (isinstance(func.value, ast.Name)
                                                            and func.value.id in MODULE_OPENS) else 1
        mode = call.args[pos] if len(call.args) > pos else None
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and re.fullmatch(r"[rwaxbt+]{1,4}(:\w+)?",
                                                                                      mode.value):
        return mode.value
    return None


def file_writes(source: str) -> list[str]:
    """Where ``source`` writes a file itself: ``os.replace``/``os.rename``/``shutil.move``, ``os.open``,
    ``open``/``.open`` in a writing mode (not on a ``fileobj=``), ``.write_text``/``.write_bytes``,
    ``cv2.imwrite``, as "line N: what"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if (owner, name) in (("os", "replace"), ("os", "rename"), ("shutil", "move"), ("os", "open")) \
                or name in ("write_text", "write_bytes", "imwrite"):
            found.append(f"line {node.lineno}: {owner + '.' if owner else ''}{name}")
        elif name == "open" and not any(k.arg == "fileobj" for k in node.keywords):
            mode = _mode(node)
            if mode is not None and any(c in mode for c in "wax+"):
                found.append(f"line {node.lineno}: open(mode={mode!r})")
    return sorted(found, key=lambda f: int(f.split(":")[0].split()[1]))


def test_the_write_check_finds_each_kind_of_write():
    src = ("os.replace(tmp, path)\n"
           "with open(p, 'w') as f: pass\n"
           "with open(p, 'rb') as f: pass\n"   # reading
           "Path(p).write_text('x')\n"
           "with path.open('a') as f: pass\n"
           "with tarfile.open(fileobj=f, mode='w:gz') as t: pass\n"  # into a file object atomic_write opened
           "cv2.imwrite(p, img)\n"
           "open(p, mode='xb')\n")
    assert file_writes(src) == ["line 1: os.replace", "line 2: open(mode='w')", "line 4: write_text",
                                "line 5: open(mode='a')", "line 7: cv2.imwrite", "line 8: open(mode='xb')"]


@pytest.mark.parametrize("path", [p for p in SOURCES if _rel(p) not in WRITERS], ids=_rel)
def test_files_are_written_by_utils_io(path):
    writes = file_writes(path.read_text(encoding="utf-8"))
    assert not writes, (f"{_rel(path)} writes files itself ({'; '.join(writes)}): use detres.utils.io's atomic_write "
                        "(or add the module to WRITERS with the reason)")


@pytest.mark.parametrize("rel", sorted(WRITERS))
def test_each_listed_writer_still_writes(rel):
    assert file_writes((ROOT / rel).read_text(encoding="utf-8")), f"{rel} writes nothing itself now: drop it from WRITERS"


# --------------------------------------------------------------------------------------------------
# the pictures show the model the evaluation measured
# --------------------------------------------------------------------------------------------------
def test_vis_pictures_are_drawn_with_the_evaluated_model(tmp_path, monkeypatch):
    """eval.json comes from the fast path's copy (test.fast_inference); vis/*.png must too, not the eager model."""
    from _engine_helpers import write_tiny_config
    from detres.tasks import common, detection

    prepared, drawn = [], []
    real_prepare, real_vis = detection.prepare_for_inference, detection.visualize_dataset

    def prepare(model, **kw):
        prepared.append(real_prepare(model, **kw))
        return prepared[-1]

    def vis(model, *args, **kw):
        drawn.append(model)
        return real_vis(model, *args, **kw)

    monkeypatch.setattr(detection, "prepare_for_inference", prepare)
    monkeypatch.setattr(detection, "visualize_dataset", vis)
    cfg = common.read_config(write_tiny_config(tmp_path), ["solver.max_iter=1", "solver.steps=[]", "test.eval_period=0",
                                                            "solver.checkpoint_period=0", "test.num_vis_images=1",
                                                            "test.fast.pool_threads=1"])
    detection.run_train(cfg, progress=False)
    assert len(prepared) == 2  # the final evaluation's copy, then the pictures'
    assert len(drawn) == 1 and drawn[0] is prepared[1] and drawn[0].inference_options["pool_threads"] == 1
    assert len(list((tmp_path / "out" / "vis").glob("*.png"))) == 1


# --------------------------------------------------------------------------------------------------
# build_solver is the one translation of cfg.solver (the benchmarks too)
# --------------------------------------------------------------------------------------------------
def solver_builders(source: str) -> list[str]:
    """Imports of engine.solver's SGD/schedule builders (only tasks.common.build_solver calls them)."""
    return sorted(f"line {n.lineno}: imports {a.name}" for n in ast.walk(ast.parse(source))
                  if isinstance(n, ast.ImportFrom) and n.module == "detres.engine.solver"
                  for a in n.names if a.name in ("build_sgd", "build_warmup_multistep"))


def test_the_solver_check_finds_an_own_sgd():
    assert solver_builders("from detres.engine.solver import build_sgd, scale_lr\n") == ["line 1: imports build_sgd"]


@pytest.mark.parametrize("path", [p for p in SOURCES if _rel(p) != "detres/tasks/common.py"], ids=_rel)
def test_only_build_solver_builds_the_sgd(path):
    found = solver_builders(path.read_text(encoding="utf-8"))
    assert not found, f"{_rel(path)} builds its own optimiser ({'; '.join(found)}): use tasks.common.build_solver(cfg, model)"


def test_benchmark_steps_use_the_configs_sgd(tmp_path):
    """The timed step updates the parameters with the config's SGD: the scaled rate, momentum, weight decay and
    the bias group of solver.bias_lr_factor / weight_decay_bias (not a fixed lr=1e-4)."""
    from _engine_helpers import write_tiny_config
    from detres.tasks.common import read_config
    from detres.tasks.timing import config_summary, det_step

    cfg = read_config(write_tiny_config(tmp_path), ["solver.base_lr=0.02", "solver.momentum=0.8",
                                                    "solver.weight_decay=0.001", "solver.bias_lr_factor=2",
                                                    "solver.weight_decay_bias=0", "solver.ims_per_batch=4"])
    step = det_step(cfg, device="cpu")
    groups = step.optimizer.param_groups
    # reference_batch 2, 4 images per step on one process: the rate is doubled (linear scaling rule)
    assert [(g["initial_lr"], g["momentum"], g["weight_decay"]) for g in groups] == [(0.04, 0.8, 0.001),
                                                                                    (0.08, 0.8, 0.0)]
    assert (step.image_size, step.ims_per_batch, step.num_classes, step.backbone) == ((64, 64), 4, 4, "resnet18")
    assert config_summary(cfg) == {"min_size": 64, "max_size": 64, "backbone": "resnet18", "ims_per_batch": 4,
                                   "iter_size": 1}  # what benchmarks/scale.py's paper-config job reports


# --------------------------------------------------------------------------------------------------
# no function over 60 lines (issue 18)
# --------------------------------------------------------------------------------------------------
def test_no_function_over_60_lines():
    """Every function and method of detres/ and tools/ is at most 60 lines from ``def`` to the end of its body
    (ast ``end_lineno - lineno + 1``); a longer one is split into helpers along its steps."""
    limit = 60

    def too_long(source: str) -> list[str]:
        return [f"line {n.lineno}: {n.name} is {n.end_lineno - n.lineno + 1} lines"
                for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                and n.end_lineno - n.lineno + 1 > limit]

    # negative control: a 60-line function passes, a 61-line method (nested in a class) is found
    fits = "def fits():\n" + "".join(f"    x{k} = {k}\n" for k in range(59))  # lines 1-60
    long = "class C:\n    def long(self):\n" + "".join(f"        x{k} = {k}\n" for k in range(60))  # 61-122
    assert too_long(fits) == []
    assert too_long(fits + long) == ["line 62: long is 61 lines"]
    found = [f"{_rel(p)} {hit}" for p in SOURCES for hit in too_long(p.read_text(encoding="utf-8"))]
    assert not found, "functions over 60 lines (split them along their steps):\n" + "\n".join(found)
