"""The paper's CIFAR-10 study over run folders (Fig. 6, Fig. 7, Table 6), and the degradation problem on a
laptop (scikit-learn's digits: no download).

Run folders are those of ``tools/train_cls.py`` with a ``cifar_*`` (or digits) config: ``config.yaml``,
``metrics.jsonl`` (``train_error`` per logged iteration, ``eval/top1_error_center`` per evaluation),
``model_final.pth`` and ``eval.json``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from detres.backbones import backbone_info
from detres.config import ClsConfig, config_from_dict, load_config
from detres.data.loader import build_test_loader, stack_collate
from detres.engine.checkpoint import load_checkpoint
from detres.evaluation.degradation import format_table6, layer_responses, plot_error_curves, plot_layer_responses
from detres.evaluation.plots import read_metrics
from detres.tasks.classification import build_datasets, build_model, run_train
from detres.utils.io import atomic_write_json, read_json

__all__ = ["load_cls_run", "error_curves", "responses", "table6", "degradation_demo", "DEMO_SETTINGS"]

logger = logging.getLogger("detres")


def load_cls_run(run_dir: str | os.PathLike) -> tuple[ClsConfig, Path]:
    """(the run's config, its folder); ValueError naming a missing file."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path}: not found (not a run folder of tools/train_cls.py)")
    cfg = load_config(cfg_path)
    if not isinstance(cfg, ClsConfig):
        raise ValueError(f"{cfg_path}: a {cfg.task} run, not a classification run")
    return cfg, run_dir


def _label(cfg: ClsConfig, run_dir: Path) -> str:
    return backbone_info(cfg.model.name).label or run_dir.name


def error_curves(run_dirs: Sequence[str | os.PathLike], out_png: str | os.PathLike) -> str:
    """Fig. 6 from the runs' metrics.jsonl (train error thin, test error bold; plain left, residual right)."""
    runs = {}
    for d in run_dirs:
        cfg, path = load_cls_run(d)
        runs[_label(cfg, path)] = read_metrics(path / "metrics.jsonl")
    return plot_error_curves(runs, out_png)


def responses(run_dirs: Sequence[str | os.PathLike], out_png: str | os.PathLike, *, device: str = "cpu") -> str:
    """Fig. 7: each run's layer response std on its evaluation set (PNG + JSON)."""
    results = {}
    for d in run_dirs:
        cfg, path = load_cls_run(d)
        model = build_model(cfg)
        model.load_state_dict(load_checkpoint(str(path / "model_final.pth"))["model"])
        _, eval_set = build_datasets(cfg, train=False)
        loader = build_test_loader(eval_set, batch_size=cfg.test.ims_per_batch, collate_fn=stack_collate)
        results[_label(cfg, path)] = layer_responses(model.to(device), loader, device=device)
    return plot_layer_responses(results, out_png)


def table6(run_dirs: Sequence[str | os.PathLike]) -> str:
    """Table 6: each run's test error beside the paper's."""
    rows = []
    for d in run_dirs:
        cfg, path = load_cls_run(d)
        ev_path = path / "eval.json"
        err = read_json(ev_path).get("top1_error_center") if ev_path.is_file() else None
        rows.append((str(path), cfg.model.name, err))
    return format_table6(rows)


#: The laptop demo: a shallow and a deep net of each kind, the CIFAR recipe (Sec. 4.2) on 8x8 digits.
DEMO_SETTINGS: dict[str, Any] = {
    "nets": ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56"),
    "max_iter": 1200, "base_lr": 0.1, "batch": 128, "eval_period": 200, "log_period": 20,
}


def _demo_config(name: str, out_dir: Path, settings: dict) -> ClsConfig:
    n = settings["max_iter"]
    return config_from_dict({
        "task": "classification",
        "model": {"name": name, "num_classes": 10, "norm": "bn"},
        "data": {"dataset": "digits", "num_workers": 0},
        "solver": {"base_lr": settings["base_lr"], "ims_per_batch": settings["batch"],
                   "reference_batch": settings["batch"], "max_iter": n, "steps": [n // 2, 3 * n // 4],
                   "warmup_iters": 0, "momentum": 0.9, "weight_decay": 0.0001, "checkpoint_period": 0,
                   "log_period": settings["log_period"], "amp": None},
        "test": {"eval_period": settings["eval_period"], "ten_crop": False, "ims_per_batch": 512},
        "output_dir": str(out_dir / name), "seed": 0,
    }, ClsConfig)


@torch.no_grad()
def _final_train_error(cfg: ClsConfig, model: torch.nn.Module) -> float:
    """Top-1 error on the whole training set, without augmentation, in eval mode."""
    train_set, _ = build_datasets(cfg, test=False)
    train_set.train = False
    loader = build_test_loader(train_set, batch_size=512, collate_fn=stack_collate)
    model.eval()
    wrong = total = 0
    for images, labels in loader:
        wrong += int((model(images).argmax(1) != labels).sum())
        total += len(labels)
    return wrong / total


def degradation_demo(out_dir: str | os.PathLike, *, settings: dict | None = None, progress: bool = False) -> dict:
    """Train each of ``settings["nets"]`` on scikit-learn's digits, draw Fig. 6 and Fig. 7, and say whether
    the paper's observations hold: the deep plain net ends with a HIGHER training error than the shallow
    plain one, the deep residual net with one AT OR BELOW the shallow residual one, and the residual nets'
    responses are smaller. Writes ``fig6_error_curves.png``, ``fig7_responses.png(.json)`` and
    ``summary.json`` to ``out_dir``; returns the summary."""
    settings = {**DEMO_SETTINGS, **(settings or {})}
    out = Path(out_dir)
    summary: dict[str, Any] = {"settings": settings, "nets": {}}
    for name in settings["nets"]:
        cfg = _demo_config(name, out, settings)
        t0 = time.perf_counter()
        run_train(cfg, overwrite=True, progress=progress)
        model = build_model(cfg)
        model.load_state_dict(load_checkpoint(os.path.join(cfg.output_dir, "model_final.pth"))["model"])
        summary["nets"][name] = {"train_error": _final_train_error(cfg, model),
                                 "test_error": read_json(Path(cfg.output_dir, "eval.json"))["top1_error_center"],
                                 "minutes": (time.perf_counter() - t0) / 60}
    dirs = [out / n for n in settings["nets"]]
    summary["fig6"] = error_curves(dirs, out / "fig6_error_curves.png")
    summary["fig7"] = responses(dirs, out / "fig7_responses.png")
    resp = read_json(Path(f"{summary['fig7']}.json"))
    mean_std = {k: sum(s for _, s in v) / len(v) for k, v in resp.items()}
    te = {k: v["train_error"] for k, v in summary["nets"].items()}
    info = {n: backbone_info(n) for n in settings["nets"]}
    plain, residual = [n for n in info if not info[n].residual], [n for n in info if info[n].residual]
    summary["mean_response_std"] = mean_std
    if len(plain) == 2 and len(residual) == 2:
        summary["observed"] = {
            "deep plain trains worse than shallow plain": te[plain[1]] > te[plain[0]],
            "deep residual trains at least as well as shallow residual": te[residual[1]] <= te[residual[0]],
            "residual responses smaller than plain (same depth)": all(
                mean_std[info[r].label] < mean_std[info[p].label] for p, r in zip(plain, residual)),
        }
    atomic_write_json(out / "summary.json", summary)
    return summary
