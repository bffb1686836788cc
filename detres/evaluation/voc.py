"""PASCAL VOC detection evaluation with the official devkit's rules (VOCevaldet / VOCap).

Rules, per class:

- Detections are ranked by decreasing score; a stable sort keeps tied detections in results-file
  (processing) order.
- Overlap uses inclusive pixels: ``w = x2 - x1 + 1`` in 1-based VOC coordinates; only ground-truth
  boxes that actually intersect (``iw > 0 and ih > 0``) are candidates. A detection takes the
  candidate with the largest overlap (the first one in annotation order on ties).
- If that overlap is >= 0.5: a difficult box makes the detection "don't care" (neither TP nor
  FP); a non-difficult box not yet matched makes it a TP (and marks the box); an already matched
  box makes it an FP (duplicate). Otherwise the detection is an FP.
- Recall is over the non-difficult boxes (``npos``); precision is ``tp / (tp + fp)``.
- AP is reported as the VOC2007 11-point AP (mean over the devkit's 11 thresholds ``0:0.1:1`` of
  the best precision at recall >= t, 0 if none; the thresholds are the floating-point values the
  devkit computes, see :data:`VOC07_RECALL_THRESHOLDS`) and as the VOC2010+ area AP (area under the
  precision envelope).
- No detections gives AP 0; a class with no non-difficult box gives ``None`` (left out of the
  mean, with a warning).

Coordinates. Detections/ground truth in detres are 0-based continuous xyxy (VOC ``x1 - 1, y1 - 1,
x2, y2``); they are converted to 1-based VOC pixels (``x1 + 1, y1 + 1, x2, y2``) for the results
files and for the overlap, exactly as the devkit sees them.

Results files: one per class, ``comp4_det_test_<class>.txt``, lines
``<image_id> <score> <x1> <y1> <x2> <y2>`` (1-based VOC pixels; the VOC2012 server format). Floats
are written with Python's shortest round-trip ``repr``, so reading them back gives bit-identical
numbers and the same AP as the in-memory evaluation.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Subset

from detres.data.transforms import to_original
from detres.evaluation.plots import plot_pr_curves
from detres.utils.comm import all_gather_objects, is_main_process
from detres.utils.io import atomic_write, atomic_write_text

__all__ = [
    "ClassDetections",
    "VOC07_RECALL_THRESHOLDS",
    "voc_ap_11point",
    "voc_ap_area",
    "voc_eval",
    "evaluate_voc",
    "write_voc_results",
    "read_voc_results",
    "ground_truth_from",
    "VOCEvaluator",
    "VOCServerResults",
    "write_server_results",
    "format_voc_table",
    "evaluate_voc_results_dir",
]

logger = logging.getLogger(__name__)

RESULTS_PATTERN = re.compile(r"^comp(\d+)_det_([A-Za-z0-9]+)_(.+)\.txt$")


class ClassDetections(NamedTuple):
    """Detections of one class: ``image_ids`` list[str] [N], ``scores`` float64 [N], ``boxes``
    float64 [N, 4] in 1-based VOC pixels (x1, y1, x2, y2), in results-file order."""

    image_ids: list
    scores: np.ndarray
    boxes: np.ndarray


class GroundTruth(NamedTuple):
    """Ground truth of one image: ``boxes`` float64 [M, 4] 0-based (detres convention),
    ``labels`` int64 [M] in 1..K, ``difficult`` bool [M]."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


# --------------------------------------------------------------------------------------------------
# AP from precision/recall


#: The devkit's recall thresholds: VOCevaldet.m's ``t=0:0.1:1`` as Octave evaluates it, which is also
#: ``numpy.arange(0, 1.1, 0.1)`` (py-faster-rcnn's voc_eval.py): 0.30000000000000004, 0.6000000000000001
#: and 0.7000000000000001 are NOT reached by a recall of exactly 3/10, 6/10 or 7/10. Every published
#: VOC07 number uses these, so detres does too.
VOC07_RECALL_THRESHOLDS: np.ndarray = np.arange(0.0, 1.1, 0.1)


def voc_ap_11point(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point AP: ``sum over t of max(prec[rec >= t]), divided by 11``, for t in
    :data:`VOC07_RECALL_THRESHOLDS` (an empty selection contributes 0). The devkit adds ``p / 11`` term by
    term; summing first differs by a few units in the last place at most and gives a perfect detector
    exactly 1.0."""
    rec, prec = np.asarray(rec, np.float64), np.asarray(prec, np.float64)
    total = 0.0
    for t in VOC07_RECALL_THRESHOLDS:
        sel = prec[rec >= t]
        total += sel.max() if sel.size else 0.0
    return float(total / 11.0)


def voc_ap_area(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotone precision envelope, summed where recall changes."""
    mrec = np.concatenate([[0.0], np.asarray(rec, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(prec, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


# --------------------------------------------------------------------------------------------------
# one class, raw arrays


def voc_eval(det_image: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray, gt_image: np.ndarray,
             gt_boxes: np.ndarray, gt_difficult: np.ndarray, *, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Evaluate one class with the devkit rules (see the module docstring).

    ``det_image`` int [D] (image index), ``det_scores`` [D], ``det_boxes`` [D, 4];
    ``gt_image`` int [G], ``gt_boxes`` [G, 4], ``gt_difficult`` bool [G]. Boxes are xyxy in
    1-based VOC pixels (any consistent origin works: overlaps use ``+1`` widths).
    Returns ``{"ap_11point", "ap_area" (None when npos == 0), "npos", "tp" [D], "fp" [D] (0/1 in
    ranked order), "rec", "prec" (cumulative, ranked order)}``.
    """
    det_image = np.asarray(det_image, np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    gt_image = np.asarray(gt_image, np.int64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_difficult = np.asarray(gt_difficult, bool).reshape(-1)
    n_det, n_gt = len(det_scores), len(gt_image)
    if len(det_image) != n_det or len(det_boxes) != n_det:
        raise ValueError("voc_eval: det_image, det_scores and det_boxes differ in length")
    if len(gt_boxes) != n_gt or len(gt_difficult) != n_gt:
        raise ValueError("voc_eval: gt_image, gt_boxes and gt_difficult differ in length")
    npos = int((~gt_difficult).sum())

    order = np.argsort(-det_scores, kind="stable")
    d_img, d_box = det_image[order], det_boxes[order]
    tp = np.zeros(n_det, np.float64)
    fp = np.zeros(n_det, np.float64)
    if n_det:
        ovmax, jmax = _best_overlaps(d_img, d_box, gt_image, gt_boxes)
        _mark_tp_fp(tp, fp, ovmax, jmax, gt_difficult, iou_threshold)

    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    denom = tp_c + fp_c
    prec = np.divide(tp_c, denom, out=np.zeros_like(tp_c), where=denom > 0)
    if npos == 0:
        rec = np.full_like(tp_c, np.nan)
        ap11 = ap_area = None
    else:
        rec = tp_c / npos
        ap11, ap_area = voc_ap_11point(rec, prec), voc_ap_area(rec, prec)
    return {"ap_11point": ap11, "ap_area": ap_area, "npos": npos, "tp": tp, "fp": fp, "rec": rec, "prec": prec}


def _best_overlaps(d_img: np.ndarray, d_box: np.ndarray, gt_image: np.ndarray, gt_boxes: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(ovmax [D], jmax [D])``: each detection's best IoU (devkit ``+1`` widths) with a ground-truth box of
    its image and that box's index into ``gt_image`` (the first in annotation order on a tie); ``-inf`` and
    -1 for a detection that overlaps no box. Detections ``[D]`` in ranked order, ``D >= 1``."""
    n_det = len(d_img)
    ovmax = np.full(n_det, -np.inf)
    jmax = np.full(n_det, -1, np.int64)
    if not len(gt_image):
        return ovmax, jmax
    g_order = np.argsort(gt_image, kind="stable")  # group by image, keep annotation order
    g_img, g_box = gt_image[g_order], gt_boxes[g_order]
    n_img = int(max(d_img.max(), g_img.max())) + 1
    counts = np.bincount(g_img, minlength=n_img)
    starts = np.cumsum(counts) - counts
    per_det = counts[d_img]
    n_pairs = int(per_det.sum())
    if n_pairs:
        pair_det = np.repeat(np.arange(n_det), per_det)
        seg_start = np.cumsum(per_det) - per_det
        pair_gt = np.repeat(starts[d_img], per_det) + (np.arange(n_pairs) - np.repeat(seg_start, per_det))
        b, g = d_box[pair_det], g_box[pair_gt]
        iw = np.minimum(b[:, 2], g[:, 2]) - np.maximum(b[:, 0], g[:, 0]) + 1.0
        ih = np.minimum(b[:, 3], g[:, 3]) - np.maximum(b[:, 1], g[:, 1]) + 1.0
        inter = iw * ih
        union = ((b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
                 + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter)
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = np.where((iw > 0) & (ih > 0), inter / union, -np.inf)
        has = per_det > 0
        ovmax[has] = np.maximum.reduceat(ov, seg_start[has])
        at_max = np.flatnonzero(ov == ovmax[pair_det])
        dets_at_max, first = np.unique(pair_det[at_max], return_index=True)
        jmax[dets_at_max] = g_order[pair_gt[at_max[first]]]
    return ovmax, jmax


def _mark_tp_fp(tp: np.ndarray, fp: np.ndarray, ovmax: np.ndarray, jmax: np.ndarray, gt_difficult: np.ndarray,
                iou_threshold: float) -> None:
    """Set ``tp``/``fp`` (``[D]``, ranked order, zeros on entry) in place with the devkit's rules: a detection
    under the threshold is a false positive; the earliest-ranked one matching a box is a true positive, a later
    one a duplicate (false positive); one whose best box is difficult stays 0/0 ("don't care")."""
    n_det, n_gt = len(ovmax), len(gt_difficult)
    matched = ovmax >= iou_threshold
    fp[~matched] = 1.0
    cand = np.flatnonzero(matched & ~gt_difficult[np.maximum(jmax, 0)] if n_gt else np.zeros(n_det, bool))
    if cand.size:
        fp[cand] = 1.0
        _, first = np.unique(jmax[cand], return_index=True)  # earliest-ranked detection per box
        tp[cand[first]] = 1.0
        fp[cand[first]] = 0.0


# --------------------------------------------------------------------------------------------------
# all classes


def evaluate_voc(detections: Mapping[str, ClassDetections], ground_truth: Mapping[str, GroundTruth],
                 class_names: Sequence[str], *, image_ids: Sequence[str] | None = None,
                 iou_threshold: float = 0.5, curves: dict | None = None) -> dict[str, Any]:
    """Evaluate all classes. ``ground_truth``: image id -> :class:`GroundTruth` (0-based boxes);
    ``image_ids`` restricts the evaluated set (default: all ground-truth images). Detections on an
    image outside the set raise ValueError. Returns the ``--json-out`` VOC schema:
    ``{"mAP_11point", "mAP_area", "AP_11point": {class: float | None}, "AP_area": {...}}``.
    ``curves``: a dict to fill with class -> (recall [D], precision [D], 11-point AP) for the PR curves.
    """
    ids = [str(i) for i in (image_ids if image_ids is not None else ground_truth.keys())]
    index = {image_id: k for k, image_id in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError("evaluate_voc: duplicate image ids in the evaluated set")
    gt_img, gt_box, gt_lab, gt_diff = [], [], [], []
    for image_id in ids:
        if image_id not in ground_truth:
            raise ValueError(f"evaluate_voc: no ground truth for image {image_id!r}")
        g = ground_truth[image_id]
        m = len(g.labels)
        gt_img.append(np.full(m, index[image_id], np.int64))
        gt_box.append(np.asarray(g.boxes, np.float64).reshape(-1, 4))
        gt_lab.append(np.asarray(g.labels, np.int64).reshape(-1))
        gt_diff.append(np.asarray(g.difficult, bool).reshape(-1))
    gt_img = np.concatenate(gt_img) if gt_img else np.zeros(0, np.int64)
    gt_box = np.concatenate(gt_box) if gt_box else np.zeros((0, 4))
    gt_box = gt_box + np.array([1.0, 1.0, 0.0, 0.0])  # 0-based -> 1-based VOC pixels
    gt_lab = np.concatenate(gt_lab) if gt_lab else np.zeros(0, np.int64)
    gt_diff = np.concatenate(gt_diff) if gt_diff else np.zeros(0, bool)

    unknown = set(detections) - set(class_names)
    if unknown:
        raise ValueError(f"evaluate_voc: detections for unknown classes {sorted(unknown)}")
    ap11: dict[str, float | None] = {}
    aparea: dict[str, float | None] = {}
    for label, name in enumerate(class_names, start=1):
        dets = detections.get(name)
        if dets is None or len(dets.scores) == 0:
            d_img, d_sc, d_box = np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
        else:
            try:
                d_img = np.fromiter((index[str(i)] for i in dets.image_ids), np.int64, len(dets.image_ids))
            except KeyError as exc:
                raise ValueError(f"evaluate_voc: class {name!r} has a detection on image {exc.args[0]!r}, "
                                 "which is not in the evaluated set") from None
            d_sc, d_box = dets.scores, dets.boxes
        sel = gt_lab == label
        r = voc_eval(d_img, d_sc, d_box, gt_img[sel], gt_box[sel], gt_diff[sel], iou_threshold=iou_threshold)
        if r["npos"] == 0:
            logger.warning("VOC eval: class %r has no non-difficult ground truth; its AP is null and left out of the mean",
                           name)
        ap11[name], aparea[name] = r["ap_11point"], r["ap_area"]
        if curves is not None:
            curves[name] = (r["rec"], r["prec"], r["ap_11point"])

    def mean(values: dict) -> float | None:
        v = [x for x in values.values() if x is not None]
        return float(np.mean(v)) if v else None

    return {"mAP_11point": mean(ap11), "mAP_area": mean(aparea), "AP_11point": ap11, "AP_area": aparea}


# --------------------------------------------------------------------------------------------------
# results files


def _fmt(x: float) -> str:
    return repr(float(x))


def write_voc_results(detections: Mapping[str, ClassDetections], out_dir: str | os.PathLike, *,
                      class_names: Sequence[str] | None = None, prefix: str = "comp4_det_test_") -> list[Path]:
    """Write ``<out_dir>/<prefix><class>.txt`` per class (every class in ``class_names`` gets a file,
    possibly empty). Lines: ``<image_id> <score> <x1> <y1> <x2> <y2>``, 1-based VOC pixels."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names is not None else list(detections)
    paths = []
    for name in names:
        dets = detections.get(name, ClassDetections([], np.zeros(0), np.zeros((0, 4))))
        lines = [
            f"{image_id} {_fmt(s)} {_fmt(b[0])} {_fmt(b[1])} {_fmt(b[2])} {_fmt(b[3])}\n"
            for image_id, s, b in zip(dets.image_ids, np.asarray(dets.scores).tolist(), np.asarray(dets.boxes).tolist())
        ]
        path = out_dir / f"{prefix}{name}.txt"
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def _parse_results_lines(path: Path, text: str, valid_ids: set[str] | None) -> tuple[list[str], np.ndarray]:
    """Image ids and float64 [N, 5] (score, x1, y1, x2, y2) of a results file's text, in file order.

    The whole text is split and converted at once (``float`` of each field, as before); when anything is
    wrong the lines are read again one by one, so that the error names the first bad line."""
    lines = text.splitlines()
    if all(len(line.split()) in (0, 6) for line in lines):
        tokens = text.split()  # line breaks are whitespace too: the same fields, in the same order
        table = np.array(tokens, dtype=object).reshape(-1, 6)
        try:
            values = table[:, 1:].astype(np.float64)
        except (ValueError, TypeError):
            values = None
        ids = tokens[0::6]
        if (values is not None and bool(np.isfinite(values).all())
                and (valid_ids is None or valid_ids.issuperset(ids))):
            return ids, values
    return _parse_results_lines_one_by_one(path, lines, valid_ids)


def _parse_results_lines_one_by_one(path: Path, lines: list[str], valid_ids: set[str] | None
                                    ) -> tuple[list[str], np.ndarray]:
    ids, values = [], []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise ValueError(f"{path}:{lineno}: expected 6 fields '<image_id> <score> <x1> <y1> <x2> <y2>', "
                             f"got {len(fields)}")
        try:
            nums = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric score or coordinate in {line.strip()!r}") from None
        if not all(np.isfinite(nums)):
            raise ValueError(f"{path}:{lineno}: non-finite score or coordinate in {line.strip()!r}")
        if valid_ids is not None and fields[0] not in valid_ids:
            raise ValueError(f"{path}:{lineno}: image id {fields[0]!r} is not in the ground-truth image set")
        ids.append(fields[0])
        values.append(nums)
    return ids, np.asarray(values, np.float64).reshape(-1, 5)


def read_voc_results(results_dir: str | os.PathLike, class_names: Sequence[str], *,
                     valid_ids: set[str] | None = None) -> dict[str, ClassDetections]:
    """Read ``comp<N>_det_<split>_<class>.txt`` files from ``results_dir``.

    Raises ValueError (one line naming the file and line) for: a missing directory, a results
    file for a class not in ``class_names``, two files for one class, a line without exactly six
    fields, a non-numeric / non-finite value, or (when ``valid_ids`` is given) an image id outside
    it. A class without a file has no detections (warned).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir}: results directory not found")
    known = set(class_names)
    files: dict[str, Path] = {}
    for path in sorted(results_dir.iterdir()):
        m = RESULTS_PATTERN.match(path.name)
        if not m or not path.is_file():
            continue
        cls = m.group(3)
        if cls not in known:
            raise ValueError(f"{path}: results file for unknown class {cls!r} (known: {', '.join(class_names)})")
        if cls in files:
            raise ValueError(f"{path}: a second results file for class {cls!r} (the first is {files[cls].name})")
        files[cls] = path
    if not files:
        raise ValueError(f"{results_dir}: no results files named comp4_det_test_<class>.txt")
    out: dict[str, ClassDetections] = {}
    for cls in class_names:
        path = files.get(cls)
        if path is None:
            logger.warning("%s: no results file for class %r; it has no detections", results_dir, cls)
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a UTF-8 text file ({e})") from None
        ids, arr = _parse_results_lines(path, text, valid_ids)
        inverted = int(((arr[:, 3] < arr[:, 1]) | (arr[:, 4] < arr[:, 2])).sum())
        if inverted:
            logger.warning("%s: %d detection(s) with x2 < x1 or y2 < y1; they overlap nothing and count as false "
                           "positives", path, inverted)
        out[cls] = ClassDetections(ids, arr[:, 0].copy(), arr[:, 1:].copy())
    return out


# --------------------------------------------------------------------------------------------------
# ground truth sources and the evaluator


def ground_truth_from(source: Any) -> dict[str, GroundTruth]:
    """Ground truth in ORIGINAL pixels (0-based), image id -> :class:`GroundTruth`, from:
    a :class:`~detres.data.voc.VOCDetection` / ``ConcatDetection`` (anything with ``ids`` and
    ``get_annotation(i)``), a ``Subset`` or ``ConcatDataset`` of those, or a mapping image id ->
    object/dict with ``boxes``, ``labels``, ``difficult``."""
    if isinstance(source, Mapping):
        out = {}
        for image_id, g in source.items():
            get = (lambda k: g[k]) if isinstance(g, Mapping) else (lambda k: getattr(g, k))
            boxes = get("boxes")
            boxes = boxes.numpy() if isinstance(boxes, torch.Tensor) else boxes
            labels, diff = get("labels"), get("difficult")
            out[str(image_id)] = GroundTruth(np.asarray(boxes, np.float64).reshape(-1, 4),
                                             np.asarray(labels, np.int64).reshape(-1), np.asarray(diff, bool).reshape(-1))
        return out
    if hasattr(source, "get_annotation") and hasattr(source, "ids"):
        out = {}
        for i in range(len(source.ids)):
            a = source.get_annotation(i)
            out[str(a.image_id)] = GroundTruth(a.boxes.astype(np.float64), a.labels, a.difficult)
        return out
    if isinstance(source, Subset):
        parent = source.dataset
        if hasattr(parent, "get_annotation"):
            out = {}
            for i in source.indices:
                a = parent.get_annotation(int(i))
                out[str(a.image_id)] = GroundTruth(a.boxes.astype(np.float64), a.labels, a.difficult)
            return out
    if isinstance(source, ConcatDataset):
        out = {}
        for d in source.datasets:
            out.update(ground_truth_from(d))
        return out
    raise ValueError(f"VOCEvaluator: cannot read ground truth from {type(source).__name__}; pass a VOCDetection, "
                     "a mapping image_id -> {boxes, labels, difficult}, or None (ground truth from the targets)")


class VOCEvaluator:
    """Accumulates detections and evaluates them with the devkit rules.

    ``gt_source``: where the ground truth comes from (see :func:`ground_truth_from`), normally the
    evaluation data set itself (built with ``keep_difficult=True``): its parsed XML gives exact
    original-pixel boxes including the difficult ones. With ``gt_source=None`` the ground truth
    is taken from the targets passed to :meth:`process` (``boxes`` mapped back with
    ``to_original``, ``labels``, ``difficult``); that is only exact when no resize happened.

    :meth:`process` takes ``targets`` (with ``image_id``) and ``outputs`` (``boxes`` in ORIGINAL
    image pixels, 0-based xyxy; ``labels`` 1..K; ``scores``). :meth:`evaluate` evaluates the
    images seen by ``process`` on all ranks: it gathers each rank's compact arrays (image ids, and per
    detection the image index, label, score and box; the targets' ground truth likewise), keeps the first
    time an image was processed, and returns the same metrics on every rank; it writes the results files
    to ``output_dir`` on rank 0 when given, and returns the ``--json-out`` VOC schema.
    """

    def __init__(self, class_names: Sequence[str], *, gt_source: Any = None, output_dir: str | os.PathLike | None = None,
                 iou_threshold: float = 0.5, curves_path: str | os.PathLike | None = None) -> None:
        self.class_names = tuple(class_names)
        self.curves_path = curves_path
        self._gt = ground_truth_from(gt_source) if gt_source is not None else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self._ids: list[str] = []
        # per processed image: (labels int64 [n], scores float64 [n], boxes float64 [n, 4] in 1-based VOC pixels)
        self._dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # per processed image when the ground truth comes from the targets: (boxes 0-based [m, 4], labels, difficult)
        self._gt_t: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _record(self, target: dict, out: dict) -> str:
        """Keep one image's detections (1-based VOC pixels); returns its id."""
        image_id = str(target["image_id"])
        boxes = torch.as_tensor(out["boxes"]).detach().cpu().to(torch.float64).numpy().reshape(-1, 4)
        boxes = boxes + np.array([1.0, 1.0, 0.0, 0.0])
        labels = torch.as_tensor(out["labels"]).detach().cpu().numpy().astype(np.int64).reshape(-1)
        scores = torch.as_tensor(out["scores"]).detach().cpu().to(torch.float64).numpy().reshape(-1)
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"{type(self).__name__}: image {image_id!r} has {len(boxes)} boxes, {len(scores)} scores "
                             f"and {len(labels)} labels")
        bad = (labels < 1) | (labels > len(self.class_names))
        if bad.any():
            raise ValueError(f"VOCEvaluator: image {image_id!r} has a detection with label {int(labels[bad][0])}, "
                             f"outside 1..{len(self.class_names)}")
        self._ids.append(image_id)
        self._dets.append((labels, scores, boxes))
        return image_id

    def process(self, targets: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(targets) != len(outputs):
            raise ValueError(f"{type(self).__name__}.process: {len(targets)} targets but {len(outputs)} outputs")
        for target, out in zip(targets, outputs):
            self._record(target, out)
            if self._gt is None:
                gt_boxes = to_original(torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4), target)
                labels_t = torch.as_tensor(target["labels"]).reshape(-1)
                diff = torch.as_tensor(target.get("difficult", torch.zeros(len(labels_t), dtype=torch.bool))).reshape(-1)
                self._gt_t.append((gt_boxes.double().numpy(), labels_t.numpy().astype(np.int64),
                                   diff.numpy().astype(bool)))

    def _local_arrays(self) -> dict[str, np.ndarray]:
        """This rank's images, detections and (from the targets) ground truth as flat arrays: what is gathered."""
        def flat(parts: list, k: int, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([p[k] for p in parts]) if parts else empty

        counts = np.asarray([len(d[0]) for d in self._dets], np.int64)
        out = {"ids": np.asarray(self._ids, dtype=str), "det_image": np.repeat(np.arange(len(counts)), counts),
               "labels": flat(self._dets, 0, np.zeros(0, np.int64)), "scores": flat(self._dets, 1, np.zeros(0)),
               "boxes": flat(self._dets, 2, np.zeros((0, 4)))}
        if self._gt is None:
            g_counts = np.asarray([len(g[1]) for g in self._gt_t], np.int64)
            out.update(gt_image=np.repeat(np.arange(len(g_counts)), g_counts),
                       gt_boxes=flat(self._gt_t, 0, np.zeros((0, 4))),
                       gt_labels=flat(self._gt_t, 1, np.zeros(0, np.int64)),
                       gt_difficult=flat(self._gt_t, 2, np.zeros(0, bool)))
        return out

    @staticmethod
    def _merge(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        """The ranks' arrays as one, in rank then processing order; an image processed more than once keeps
        its first detections (and ground truth) only. ``ids`` becomes a list of unique ids."""
        offsets = np.cumsum([0] + [len(p["ids"]) for p in parts])
        ids_all = np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, str)
        _, first = np.unique(ids_all, return_index=True)
        keep = np.zeros(len(ids_all), bool)
        keep[first] = True
        position = np.cumsum(keep) - 1  # occurrence -> index among the kept ones
        merged: dict[str, Any] = {"ids": ids_all[keep].tolist()}
        for image_key, keys in (("det_image", ("labels", "scores", "boxes")),
                                ("gt_image", ("gt_boxes", "gt_labels", "gt_difficult"))):
            if image_key not in parts[0]:
                continue
            occ = np.concatenate([p[image_key] + off for p, off in zip(parts, offsets)])
            sel = keep[occ]
            merged[image_key] = position[occ[sel]]
            for k in keys:
                merged[k] = np.concatenate([p[k] for p in parts])[sel]
        return merged

    def detections(self) -> dict[str, ClassDetections]:
        """This process's detections per class, in processing order (1-based VOC pixels)."""
        return self._collect(self._merge([self._local_arrays()]))

    def _collect(self, merged: Mapping[str, Any]) -> dict[str, ClassDetections]:
        ids = np.asarray(merged["ids"], dtype=object)
        labels, det_image = merged["labels"], merged["det_image"]
        out = {}
        for label, name in enumerate(self.class_names, start=1):
            sel = np.flatnonzero(labels == label)
            out[name] = ClassDetections(ids[det_image[sel]].tolist(), merged["scores"][sel], merged["boxes"][sel])
        return out

    def evaluate(self) -> dict[str, Any]:
        merged = self._merge(all_gather_objects(self._local_arrays()))
        ids = merged["ids"]
        if self._gt is not None:
            gt = self._gt
            missing = [i for i in ids if i not in gt]
            if missing:
                raise ValueError(f"VOCEvaluator: image {missing[0]!r} is not in the ground-truth source")
            if len(ids) < len(gt):
                logger.warning("VOC eval: %d of %d ground-truth images were processed; evaluating those only",
                               len(ids), len(gt))
        else:
            bounds = np.searchsorted(merged["gt_image"], np.arange(len(ids) + 1))
            gt = {image_id: GroundTruth(merged["gt_boxes"][s:e], merged["gt_labels"][s:e], merged["gt_difficult"][s:e])
                  for image_id, s, e in zip(ids, bounds[:-1], bounds[1:])}
        per_class = self._collect(merged)
        if self.output_dir is not None and is_main_process():
            write_voc_results(per_class, self.output_dir, class_names=self.class_names)
        curves: dict = {}
        metrics = evaluate_voc(per_class, gt, self.class_names, image_ids=ids, iou_threshold=self.iou_threshold,
                               curves=curves)
        if self.curves_path is not None and is_main_process():
            plot_pr_curves(curves, self.curves_path, title=f"VOC07 11-point mAP {100 * (metrics['mAP_11point'] or 0):.1f}")
        return metrics


def write_server_results(detections: Mapping[str, ClassDetections], out_dir: str | os.PathLike, *,
                         class_names: Sequence[str], year: str = "2012", split: str = "test",
                         comp: str = "comp4") -> Path:
    """The evaluation server's submission: ``<out_dir>/VOC<year>/Main/<comp>_det_<split>_<class>.txt`` and
    ``<out_dir>.tar.gz`` holding them as ``results/VOC<year>/Main/...``, the layout the server unpacks.
    Returns the archive's path."""
    import tarfile

    out_dir = Path(out_dir)
    files = write_voc_results(detections, out_dir / f"VOC{year}" / "Main", class_names=class_names,
                              prefix=f"{comp}_det_{split}_")
    archive = out_dir.with_name(out_dir.name + ".tar.gz")

    def pack(f) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for path in files:
                tar.add(path, arcname=f"results/VOC{year}/Main/{path.name}")
    atomic_write(archive, pack, binary=True)
    return archive


class VOCServerResults(VOCEvaluator):
    """For a split whose labels are not public (VOC 2012 test): collects the detections like
    :class:`VOCEvaluator` and, instead of computing AP, writes the evaluation server's files with
    :func:`write_server_results` (rank 0). :meth:`evaluate` returns ``{"server_results": archive path,
    "results_dir", "num_images", "num_detections"}``."""

    def __init__(self, class_names: Sequence[str], *, output_dir: str | os.PathLike, year: str = "2012",
                 split: str = "test") -> None:
        super().__init__(class_names, gt_source=None, output_dir=output_dir)
        self.year, self.split = str(year), split

    def process(self, targets: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(targets) != len(outputs):
            raise ValueError(f"VOCServerResults.process: {len(targets)} targets but {len(outputs)} outputs")
        for target, out in zip(targets, outputs):
            self._record(target, out)  # no ground truth to collect

    def evaluate(self) -> dict[str, Any]:
        merged = self._merge(all_gather_objects(self._local_arrays()))
        ids = merged["ids"]
        per_class = self._collect(merged)
        archive = self.output_dir.with_name(self.output_dir.name + ".tar.gz")
        if is_main_process():
            write_server_results(per_class, self.output_dir, class_names=self.class_names, year=self.year,
                                 split=self.split)
            logger.info("VOC%s %s has no public labels: no AP computed. Wrote the evaluation server's files to %s "
                        "and %s; upload the archive to the PASCAL VOC evaluation server", self.year, self.split,
                        self.output_dir / f"VOC{self.year}" / "Main", archive)
        return {"server_results": str(archive), "results_dir": str(self.output_dir / f"VOC{self.year}" / "Main"),
                "num_images": len(ids), "num_detections": int(sum(len(d.scores) for d in per_class.values()))}


def evaluate_voc_results_dir(results_dir: str | os.PathLike, dataset: Any) -> dict[str, Any]:
    """Evaluate a folder of official results files against ``dataset`` (a VOCDetection built with
    ``keep_difficult=True``; its whole image set is evaluated, as the devkit does). A detection
    on an image outside the set is an error naming the file and line."""
    gt = ground_truth_from(dataset)
    dets = read_voc_results(results_dir, dataset.class_names, valid_ids=set(gt))
    return evaluate_voc(dets, gt, dataset.class_names)


def format_voc_table(metrics: Mapping[str, Any]) -> str:
    """A per-class table (percent) of a VOC metrics dict."""
    def pct(v):
        return "   null" if v is None else f"{100.0 * v:7.2f}"

    names = list(metrics["AP_area"])
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  {'AP11pt':>7}  {'AParea':>7}", "-" * (width + 18)]
    for n in names:
        lines.append(f"{n:<{width}}  {pct(metrics['AP_11point'][n])}  {pct(metrics['AP_area'][n])}")
    lines.append("-" * (width + 18))
    lines.append(f"{'mAP':<{width}}  {pct(metrics['mAP_11point'])}  {pct(metrics['mAP_area'])}")
    return "\n".join(lines)
