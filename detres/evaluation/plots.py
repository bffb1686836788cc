"""Pictures of an evaluation and of a training run (matplotlib, no display needed).

- :func:`plot_pr_curves`: one panel per class, precision against recall, the class's AP in its title
  (written beside ``eval.json`` by the VOC evaluation); an empty panel says why (:func:`pr_panel_note`).
  :func:`coco_pr_curves` gives the same curves from a COCOeval (IoU 0.5, all areas, 100 detections).
- :func:`plot_training_curves`: the losses against the iteration and, when evaluated more than once, mAP
  (written at the end of every training run, beside ``metrics.jsonl``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detres.utils.io import atomic_write

__all__ = ["plot_pr_curves", "pr_panel_note", "coco_pr_curves", "plot_training_curves", "read_metrics"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | os.PathLike) -> str:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"), binary=True)
    finally:
        plt.close(fig)


def pr_panel_note(rec: Sequence[float], prec: Sequence[float], ap: float | None) -> str | None:
    """Why a class's PR panel shows no curve, or None when it has one: no ground truth, no detection of
    the class, or detections of which none matches an object (AP 0)."""
    rec, prec = np.asarray(rec, float), np.asarray(prec, float)
    if ap is None:
        return "no ground truth"
    if rec.size == 0:
        return "AP 0: no detection\nof this class"
    if not (prec > 0).any():
        return "AP 0: no detection\nmatches an object"
    return None


def coco_pr_curves(coco_eval, *, iou: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    """Class name -> (recall thresholds [101], interpolated precision [101], AP at ``iou``; None without
    ground truth) from an evaluated and accumulated pycocotools ``COCOeval`` (all areas, the largest
    max-detections setting), ready for :func:`plot_pr_curves`."""
    params = coco_eval.params
    thresholds = np.asarray(params.iouThrs)
    t = int(np.argmin(np.abs(thresholds - iou)))
    if abs(thresholds[t] - iou) > 1e-6:
        raise ValueError(f"coco_pr_curves: IoU {iou} is not one of COCOeval's thresholds")
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    names = {c["id"]: c["name"] for c in coco_eval.cocoGt.loadCats(params.catIds)}
    rec = np.asarray(params.recThrs, float)
    out = {}
    for k, cat_id in enumerate(params.catIds):
        p = np.asarray(precision[t, :, k, 0, -1], float)
        out[names[cat_id]] = (rec, np.clip(p, 0, None), None if (p < 0).all() else float(p[p > -1].mean()))
    return out


def plot_pr_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]],
                   path: str | os.PathLike, *, title: str | None = None) -> str:
    """``curves``: class name -> (recall [D], precision [D], AP or None) in ranked order, as the VOC
    evaluation computes them (or :func:`coco_pr_curves`). One PNG, a panel per class; a panel without a
    curve says why (:func:`pr_panel_note`)."""
    if not curves:
        raise ValueError("plot_pr_curves: no classes to draw")
    plt = _pyplot()
    n = len(curves)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
    for ax, (name, (rec, prec, ap)) in zip(axes.flat, curves.items()):
        rec, prec = np.asarray(rec, float), np.asarray(prec, float)
        note = pr_panel_note(rec, prec, ap)
        if note is not None:
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9)
        if ap is None:
            ax.set_title(name, fontsize=10)
        else:
            if note is None:
                ax.plot(np.r_[0.0, rec], np.r_[prec[0] if prec.size else 1.0, prec], lw=1.5)
            ax.set_title(f"{name}: AP {100 * ap:.1f}", fontsize=10)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a half-written last line is skipped). ValueError if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: metrics file not found")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "iteration" in row:
            rows.append(row)
    return rows


def plot_training_curves(metrics_path: str | os.PathLike, path: str | os.PathLike) -> str:
    """Losses (total and each ``loss_*``) against the iteration, and the mAP evaluations (``eval/mAP*``
    or ``eval/AP``) in a second panel when there are any."""
    rows = read_metrics(metrics_path)
    train = [r for r in rows if "total_loss" in r]
    if not train:
        raise ValueError(f"{metrics_path}: no training rows to draw")
    evals = [r for r in rows if any(k.startswith(("eval/mAP", "eval/AP")) for k in r)]
    final = ""
    if len(evals) == 1:  # one evaluation (at the end): its numbers in the title, no second panel
        final = ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in evals[0].items()
                          if k.startswith(("eval/mAP", "eval/AP")) and isinstance(v, (int, float)))
        evals = []
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4), squeeze=False)
    ax = axes[0, 0]
    its = [r["iteration"] for r in train]
    for key in ["total_loss"] + sorted({k for r in train for k in r if k.startswith("loss")}):
        ax.plot(its, [r.get(key, np.nan) for r in train], label=key, lw=2 if key == "total_loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if final:
        ax.set_title(f"final evaluation: {final}", fontsize=10)
    if evals:
        ax = axes[0, 1]
        for key in sorted({k for r in evals for k in r if k.startswith(("eval/mAP", "eval/AP"))} - {"eval/AP_11point", "eval/AP_area"}):
            pts = [(r["iteration"], r[key]) for r in evals if key in r and isinstance(r[key], (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=key.removeprefix("eval/"))
        ax.set_xlabel("iteration")
        ax.set_ylabel("mAP")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
