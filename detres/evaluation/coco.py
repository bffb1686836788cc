"""COCO box evaluation with pycocotools' COCOeval (iouType "bbox").

Detections are written in the COCO results format (a JSON list of ``{"image_id", "category_id",
"bbox": [x, y, w, h], "score"}``) with the ORIGINAL image and category ids. The metrics are the 12
standard statistics as fractions (``None`` where COCOeval reports -1, i.e. no ground truth in that
area range) plus a per-category AP@[.5:.95] table keyed by category name.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from detres.utils.comm import all_gather_objects, broadcast_object, is_main_process
from detres.utils.io import atomic_write_text

__all__ = ["COCO_STAT_NAMES", "COCOEvaluator", "evaluate_coco_results", "load_coco_results", "format_coco_table"]

logger = logging.getLogger(__name__)

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _load_gt(coco_gt: Any):
    if isinstance(coco_gt, (str, os.PathLike)):
        from detres.data.coco import load_coco

        return load_coco(coco_gt)
    return coco_gt


def load_coco_results(path: str | os.PathLike, coco_gt) -> list[dict]:
    """Read and check a COCO results JSON. ValueError (one line, naming the file and entry) for a
    missing file, bad JSON, a missing key, an unknown image/category id or a malformed bbox."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: results file not found")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a JSON list of detections, got {type(results).__name__}")
    img_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for k, r in enumerate(results):
        where = f"{path}: entry {k}"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected an object, got {type(r).__name__}")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in r:
                raise ValueError(f"{where}: missing key {key!r}")
        if r["image_id"] not in img_ids:
            raise ValueError(f"{where}: image_id {r['image_id']!r} is not in the ground truth")
        if r["category_id"] not in cat_ids:
            raise ValueError(f"{where}: category_id {r['category_id']!r} is not in the ground truth")
        bbox = r["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(_is_number(v) and math.isfinite(v) for v in bbox)):
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if not _is_number(r["score"]) or not math.isfinite(r["score"]):
            raise ValueError(f"{where}: score must be a finite number, got {r['score']!r}")
    negative = sum(1 for r in results if r["bbox"][2] < 0 or r["bbox"][3] < 0)
    if negative:
        logger.warning("%s: %d detection(s) with a negative width or height; they overlap nothing and count as "
                       "false positives", path, negative)
    return results


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def evaluate_coco_results(coco_gt, results: Sequence[dict], *, img_ids: Sequence[int] | None = None,
                          cat_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Run COCOeval (bbox) on ``results`` (COCO results format). ``img_ids`` / ``cat_ids`` restrict the
    evaluated images / categories (default: all; a detector trained on some classes is scored on those).
    Returns the 12 statistics and ``per_category``."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = _load_gt(coco_gt)
    cat_ids = sorted(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(cat_ids)}
    if len(results) == 0:
        logger.warning("COCO eval: no detections; every metric is 0")
        metrics: dict[str, Any] = {k: 0.0 for k in COCO_STAT_NAMES}
        metrics["per_category"] = {names[c]: 0.0 for c in cat_ids}
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(set(int(i) for i in img_ids))
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: (None if v < 0 else float(v)) for k, v in zip(COCO_STAT_NAMES, ev.stats)}
    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max dets]
    precision = ev.eval["precision"]
    per_cat = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_cat[names[cat_id]] = float(p.mean()) if p.size else None
    metrics["per_category"] = per_cat
    return metrics


class COCOEvaluator:
    """Accumulates detections as COCO results and evaluates them with COCOeval.

    ``coco_gt``: a pycocotools ``COCO``, the annotation file path, or a ``COCODetection`` (then
    its ``coco`` and ``label_to_cat_id`` are used). ``label_to_cat_id``: detres label (1..K) -> COCO
    category id. :meth:`process` takes
    targets (``image_id`` = COCO image id) and outputs in ORIGINAL image pixels (xyxy). In
    distributed runs :meth:`evaluate` gathers everything, runs COCOeval on rank 0 and returns the
    same metrics on every rank. With ``output_dir`` the results JSON is written there
    (``coco_instances_results.json``) on rank 0.
    """

    def __init__(self, coco_gt: Any, *, label_to_cat_id: Mapping[int, int] | None = None,
                 output_dir: str | os.PathLike | None = None) -> None:
        if hasattr(coco_gt, "label_to_cat_id") or hasattr(getattr(coco_gt, "datasets", [None])[0], "label_to_cat_id"):
            dataset = coco_gt if hasattr(coco_gt, "label_to_cat_id") else coco_gt.datasets[0]
            coco_gt = dataset.coco
            label_to_cat_id = dataset.label_to_cat_id if label_to_cat_id is None else label_to_cat_id
        if label_to_cat_id is None:
            raise ValueError("COCOEvaluator: pass label_to_cat_id (or a COCODetection as the ground truth)")
        self.coco_gt = _load_gt(coco_gt)
        self.label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        unknown = set(self.label_to_cat_id.values()) - set(self.coco_gt.getCatIds())
        if unknown:
            raise ValueError(f"COCOEvaluator: label_to_cat_id maps to category ids not in the ground truth: {sorted(unknown)}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._img_ids: list[int] = []

    def process(self, targets: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(targets) != len(outputs):
            raise ValueError(f"COCOEvaluator.process: {len(targets)} targets but {len(outputs)} outputs")
        for target, out in zip(targets, outputs):
            image_id = int(target["image_id"])
            self._img_ids.append(image_id)
            boxes = torch.as_tensor(out["boxes"]).detach().cpu().double().numpy().reshape(-1, 4)
            scores = torch.as_tensor(out["scores"]).detach().cpu().double().numpy().reshape(-1).tolist()
            labels = torch.as_tensor(out["labels"]).detach().cpu().numpy().reshape(-1).tolist()
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
            for b, s, lab in zip(xywh, scores, labels):
                if lab not in self.label_to_cat_id:
                    raise ValueError(f"COCOEvaluator: image {image_id} has a detection with unknown label {lab}")
                self._results.append({"image_id": image_id, "category_id": self.label_to_cat_id[lab],
                                      "bbox": [round(v, 3) for v in b], "score": round(s, 5)})

    def evaluate(self) -> dict[str, Any]:
        parts = all_gather_objects((self._img_ids, self._results))
        metrics = None
        if is_main_process():
            img_ids = [i for p in parts for i in p[0]]
            results = [r for p in parts for r in p[1]]
            if self.output_dir is not None:
                atomic_write_text(self.output_dir / "coco_instances_results.json", json.dumps(results))
            metrics = evaluate_coco_results(self.coco_gt, results, img_ids=img_ids,
                                            cat_ids=sorted(self.label_to_cat_id.values()))
        return broadcast_object(metrics)


def format_coco_table(metrics: Mapping[str, Any]) -> str:
    """The 12 statistics and the per-category AP (percent) as text."""
    def pct(v):
        return "   null" if v is None else f"{100.0 * v:7.2f}"

    lines = ["  ".join(f"{k:>6}" for k in COCO_STAT_NAMES), "  ".join(f"{pct(metrics[k]):>6}" for k in COCO_STAT_NAMES), ""]
    per = metrics.get("per_category", {})
    if per:
        width = max(len(n) for n in per)
        lines.append(f"{'category':<{width}}  {'AP':>7}")
        lines.extend(f"{n:<{width}}  {pct(v)}" for n, v in per.items())
    return "\n".join(lines)
