"""The paper's comparison from the runs found on disk: ``python tools/eval.py --dataset voc07`` with nothing else.

Each ``<output root>/<prefix>*`` run folder of the benchmark (``voc07_*``, ``voc0712_*``, ``voc12_*``,
``coco_*``: the folders the paper configs train into) that has a ``config.yaml`` is taken:

* its ``model_final.pth`` is evaluated on the config's test split (:func:`detres.tasks.detection.run_eval`),
  and ``eval.json`` rewritten with the metrics and the checkpoint's SHA-256 (key ``checkpoint_sha256``);
* unless ``eval.json`` already records that SHA-256: the checkpoint is unchanged since that evaluation, whose
  numbers are used as they are. An ``eval.json`` without the record (the training's own evaluation writes
  none, and may be of an earlier iteration) or with another one is evaluated again;
* a folder without ``model_final.pth`` but with an ``eval.json`` is shown as found (said so); one with
  neither (a run that has not finished) is listed as skipped.

The runs are then printed in the layout of the paper's Table 7 / Table 8
(:func:`detres.evaluation.compare.format_compare_text`: the paper's rows, each run with its difference from
them) followed by the gain from the VGG-16 run to each ResNet run beside the paper's. No run found: one line
naming the configs to train.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from detres.evaluation.compare import PAPER, format_compare_markdown, format_compare_text, load_run
from detres.tasks.common import read_config
from detres.tasks.detection import run_eval
from detres.utils.comm import is_main_process
from detres.utils.io import atomic_write_json, atomic_write_text, sha256_file

__all__ = ["PAPER_RUNS", "CHECKPOINT", "SHA_KEY", "find_runs", "run_paper_runs"]

#: ``--dataset`` -> (run folder prefix, the paper configs that train such runs, the VGG-16 arm first).
PAPER_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "voc07": ("voc07_", ("voc07_vgg16", "voc07_r101", "voc07_r50")),
    "voc0712": ("voc0712_", ("voc0712_vgg16", "voc0712_r101")),
    "voc12": ("voc12_", ("voc12_vgg16", "voc12_r101")),
    "coco": ("coco_", ("coco_vgg16", "coco_r101", "coco_r50")),
}
CHECKPOINT = "model_final.pth"
#: The key of ``eval.json`` that records which checkpoint it measured.
SHA_KEY = "checkpoint_sha256"
_BACKBONE_ORDER = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class _Found:
    run_dir: Path
    note: str  # what was done with it: evaluated now, eval.json current, as found, skipped


def find_runs(dataset: str, output_root: str | os.PathLike) -> list[Path]:
    """The run folders of ``dataset`` under ``output_root`` (those holding a ``config.yaml``), by name."""
    if dataset not in PAPER_RUNS:
        raise ValueError(f"--dataset {dataset}: choose from {list(PAPER_RUNS)}")
    root = Path(output_root)
    if not root.is_dir():
        return []
    prefix = PAPER_RUNS[dataset][0]
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix) and (p / "config.yaml").is_file())


def _recorded_sha(eval_path: Path) -> str | None:
    """The checkpoint SHA-256 an ``eval.json`` records; None when it records none or cannot be read."""
    try:
        ev = json.loads(eval_path.read_text())
    except (OSError, ValueError):
        return None
    return ev.get(SHA_KEY) if isinstance(ev, dict) and isinstance(ev.get(SHA_KEY), str) else None


def _evaluate(run_dir: Path, sha: str, *, device: str | None, data_root: str | None,
              num_workers: int | None) -> None:
    """Evaluate ``run_dir/model_final.pth`` with the run's own config; write eval.json with ``sha``."""
    cfg = read_config(run_dir / "config.yaml", task="detection")
    metrics = run_eval(cfg, str(run_dir / CHECKPOINT), device=device, output_dir=str(run_dir / "results"),
                       num_workers=num_workers, data_root=data_root)
    if is_main_process():
        atomic_write_json(run_dir / "eval.json", {**metrics, SHA_KEY: sha})


def _bring_up_to_date(run_dir: Path, **eval_kwargs) -> _Found:
    ckpt, ev = run_dir / CHECKPOINT, run_dir / "eval.json"
    if not ckpt.is_file():
        if ev.is_file():
            return _Found(run_dir, f"eval.json as found (no {CHECKPOINT} to check it against)")
        return _Found(run_dir, f"skipped: no {CHECKPOINT} and no eval.json (training not finished?)")
    sha = sha256_file(ckpt)
    recorded = _recorded_sha(ev) if ev.is_file() else None
    if recorded == sha:
        return _Found(run_dir, f"eval.json is current ({CHECKPOINT} sha256 {sha[:12]})")
    why = "no eval.json" if not ev.is_file() else (
        "eval.json records no checkpoint" if recorded is None else f"{CHECKPOINT} changed since eval.json")
    _evaluate(run_dir, sha, **eval_kwargs)
    return _Found(run_dir, f"evaluated now ({why})")


def _train_hint(dataset: str, configs: tuple[str, ...]) -> str:
    return " and ".join(f"python tools/train_det.py configs/{c}.yaml" for c in configs)


def _gain_lines(dataset: str, runs: list) -> list[str]:
    """The VGG-16 -> ResNet gain of the runs beside the paper's (VGG-16 -> ResNet-101), per metric."""
    configs = PAPER_RUNS[dataset][1]
    vgg = [r for r in runs if r.backbone == "vgg16"]
    res = [r for r in runs if r.backbone.startswith("resnet")]
    if not vgg:
        return [f"no VGG-16 run: the gain needs {_train_hint(dataset, configs[:1])}"]
    if not res:
        return [f"no ResNet run: the gain needs {_train_hint(dataset, configs[1:2])}"]
    base, lines = vgg[0], []
    bench = base.benchmark if base.benchmark in PAPER else None
    for r in res:
        parts = []
        for m, v in r.metrics.items():
            b = base.metrics.get(m)
            ours = "n/a" if v is None or b is None else f"{v - b:+.1f}"
            paper = f"; paper (ResNet-101) {PAPER[bench][m]['resnet101'] - PAPER[bench][m]['vgg16']:+.1f}" \
                if bench and m in PAPER[bench] else ""
            parts.append(f"{m} {ours}{paper}")
        lines.append(f"gain VGG-16 -> {r.backbone} ({base.run_dir} -> {r.run_dir}): {', '.join(parts)}")
    return lines


def run_paper_runs(dataset: str, *, output_root: str | os.PathLike = "output", device: str | None = None,
                   data_root: str | None = None, num_workers: int | None = None,
                   markdown: str | os.PathLike | None = None) -> str:
    """The job of ``tools/eval.py --dataset DATASET`` alone: bring each run's evaluation up to date (see the
    module docstring) and return the text to print; ``markdown``: also write the table there."""
    found_dirs = find_runs(dataset, output_root)
    prefix, configs = PAPER_RUNS[dataset]
    if not found_dirs:
        return (f"no {prefix}* runs (with config.yaml) under {output_root}/: train them with "
                f"{_train_hint(dataset, configs)}, then run this again")
    found = [_bring_up_to_date(d, device=device, data_root=data_root, num_workers=num_workers) for d in found_dirs]
    runs = [load_run(f.run_dir) for f in found if not f.note.startswith("skipped")]
    runs.sort(key=lambda r: (_BACKBONE_ORDER.index(r.backbone) if r.backbone in _BACKBONE_ORDER else 99, r.run_dir))
    lines = [f"{dataset}: {len(found_dirs)} run folder(s) {prefix}* under {output_root}/"]
    lines += [f"  {f.run_dir}: {f.note}" for f in found]
    if not runs:
        return "\n".join(lines + [f"nothing to compare yet: finish {_train_hint(dataset, configs)}"])
    if markdown is not None and is_main_process():
        atomic_write_text(markdown, format_compare_markdown(runs))
    return "\n".join(lines) + "\n\n" + format_compare_text(runs) + "\n".join(_gain_lines(dataset, runs)) + "\n"
