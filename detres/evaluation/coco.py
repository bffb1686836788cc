"""COCO box evaluation (iouType "bbox") with faster-coco-eval, which gives pycocotools' numbers.

Detections are COCO results (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, the
ORIGINAL image and category ids), as a list of dicts or as compact arrays (:data:`RESULT_KEYS`). The
metrics are the 12 standard statistics as fractions (``None`` where COCOeval reports -1, i.e. no ground
truth in that area range) plus a per-category AP@[.5:.95] keyed by category name.

The engine is faster-coco-eval's ``COCOeval_faster`` (detectron2's C++ matching and accumulation);
pycocotools' ``COCOeval`` is the oracle in the tests (tests/test_coco_oracle.py): same matching, the same
stable ordering of tied scores (by image id, then results order), the same 12 statistics. The one
known difference: faster-coco-eval computes precision as ``tp / (tp + fp)`` where pycocotools divides by
``tp + fp + 2.2e-16``, so single precision values differ in the last bit (e.g. 1.0 against
0.9999999999999998) and a statistic by at most a few 1e-16.

Ground truth (an annotation file, its dict, a pycocotools ``COCO`` or a faster-coco-eval ``COCO``) is
checked and repaired BEFORE the evaluator's COCO object is built; every warning or error names the file
(or says which object):

- annotation ids are renumbered 1..N (they only mark matches). When the file's ids repeat or are not
  positive integers this is warned: pycocotools indexes annotations by id, so a repeated id turns every
  box sharing it into copies of one box (perfect detections then score far below 1: AP 0.25 in issue 21's
  example), and it reads
  id 0 as "unmatched", counting a detection matched to box 0 as a false positive;
- a bbox that is not 4 finite numbers is refused (ValueError naming the file and the annotation id): the
  file is broken, and leaving the box out would score the rest as if it were not there (issue 26: AP 1.0 on
  a file with a three-number box). Training's data sets leave such a box out with a warning and go on;
- a crowd region without a (valid) bbox is dropped with a warning (it could only ignore detections);
- a missing or non-finite ``area`` becomes ``w * h``, warned (the area ranges need it);
- image ids that mix integers and strings, an image id listed twice, and category ids that are not
  integers or repeat are refused (ValueError, one line). String image ids are mapped to integers in
  sorted order, which keeps pycocotools' image order and hence its tie-breaking.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from detres.evaluation.plots import coco_pr_curves, plot_pr_curves
from detres.utils.comm import all_gather_objects, broadcast_object, is_main_process
from detres.utils.io import atomic_write_text

__all__ = ["COCO_STAT_NAMES", "RESULT_KEYS", "COCOEvaluator", "evaluate_coco_results", "load_coco_results",
           "load_coco_ground_truth", "format_coco_table"]

logger = logging.getLogger(__name__)

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

#: The compact form of a results list: a mapping with these keys, ``image_id`` int [D], ``category_id``
#: int [D], ``bbox`` float [D, 4] (x, y, w, h in original-image pixels), ``score`` float [D].
RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while hundreds of thousands of small dicts are built (they hold no
    cycles; the collector's passes over them cost about a fifth of a val2017-sized evaluation)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _quiet(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's print function: say nothing (the numbers are returned)."""


# --------------------------------------------------------------------------------------------------
# ground truth


class CocoGroundTruth(NamedTuple):
    """A checked ground truth: ``coco`` (a faster-coco-eval ``COCO`` with integer image ids 1..),
    ``source`` (the file, or which object, for messages), ``image_id_map`` (the file's string image id ->
    the integer used inside; None when the file's ids are integers), ``cat_names`` (category id -> name)."""

    coco: Any
    source: str
    image_id_map: dict | None
    cat_names: dict


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_box(bbox: Any) -> bool:
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(_is_number(v) and math.isfinite(v) for v in bbox))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path}: annotation file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _first_repeat(values: Sequence) -> Any:
    seen: set = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _check_ground_truth(data: Any, source: str) -> tuple[dict, dict | None]:
    """The checked and repaired copy of a COCO annotation dict (see the module docstring) and the string
    image id map (None for integer ids). The input is not modified."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object with 'images', 'annotations' and 'categories', "
                         f"got {type(data).__name__}")
    images, anns, cats = data.get("images"), data.get("annotations", []), data.get("categories")
    for key, value in (("images", images), ("annotations", anns), ("categories", cats)):
        if not isinstance(value, list):
            raise ValueError(f"{source}: {key!r} must be a list, got {type(value).__name__}")
    raw_ids, images, id_map = _check_images(images, source)
    cat_ids = _check_category_ids(cats, source)
    out, raw_ann_ids = _check_annotations(anns, source, set(raw_ids), set(cat_ids), id_map)
    _warn_annotation_ids(raw_ann_ids, source)
    clean = {key: value for key, value in data.items() if key not in ("images", "annotations", "categories")}
    clean.update(images=images, annotations=out, categories=list(cats))
    return clean, id_map


def _check_images(images: list, source: str) -> tuple[list, list, dict | None]:
    """``(the raw image ids in order, the images with integer ids, the string id -> integer id map or None)``.
    Ids must be all integers or all strings, each once; string ids are numbered 1..N in sorted order."""
    raw_ids = []
    for k, img in enumerate(images):
        if not isinstance(img, Mapping) or "id" not in img:
            raise ValueError(f"{source}: images[{k}] has no 'id'")
        raw_ids.append(img["id"])
    ints = [i for i in raw_ids if _is_int(i)]
    strs = [i for i in raw_ids if isinstance(i, str)]
    if len(ints) + len(strs) != len(raw_ids):
        bad = next(i for i in raw_ids if not (_is_int(i) or isinstance(i, str)))
        raise ValueError(f"{source}: image id {bad!r} is neither an integer nor a string")
    if ints and strs:
        raise ValueError(f"{source}: image ids mix integers and strings (e.g. {ints[0]!r} and {strs[0]!r}); "
                         "make them all integers")
    dup = _first_repeat(raw_ids)
    if dup is not None:
        raise ValueError(f"{source}: image id {dup!r} is listed twice")
    id_map = None
    if strs:
        id_map = {s: k + 1 for k, s in enumerate(sorted(strs))}
        images = [{**img, "id": id_map[img["id"]]} for img in images]
    return raw_ids, images, id_map


def _check_category_ids(cats: list, source: str) -> list[int]:
    """The category ids in order: each an integer, each once."""
    cat_ids = []
    for k, cat in enumerate(cats):
        if not isinstance(cat, Mapping) or not _is_int(cat.get("id")):
            raise ValueError(f"{source}: categories[{k}] needs an integer 'id', got "
                             f"{cat.get('id') if isinstance(cat, Mapping) else cat!r}")
        cat_ids.append(cat["id"])
    dup = _first_repeat(cat_ids)
    if dup is not None:
        raise ValueError(f"{source}: category id {dup!r} is listed twice")
    return cat_ids


_MALFORMED = "bbox not 4 finite numbers"


def _annotation_problem(ann: Mapping, known_images: set, known_cats: set) -> str:
    """Why ``ann`` is left out of the evaluation ("" when it is kept)."""
    why = ""
    try:
        if ann.get("image_id") not in known_images:
            why = "of an image id not in 'images'"
        elif ann.get("category_id") not in known_cats:
            why = "of a category id not in 'categories'"
    except TypeError:  # an unhashable id
        why = "of an image id not in 'images'"
    if not why and not _is_box(ann.get("bbox")):
        why = "crowd region without a bbox" if ann.get("iscrowd", 0) else _MALFORMED
    return why


def _check_annotations(anns: list, source: str, known_images: set, known_cats: set, id_map: dict | None
                       ) -> tuple[list[dict], list[int | None]]:
    """``(the kept annotations, renumbered 1..N, image ids mapped through id_map and a missing area set to
    w * h; the raw annotation ids in order, None for a non-integer)``. Logs one warning per kind of problem."""
    out: list[dict] = []
    raw_ann_ids = []
    dropped: Counter = Counter()
    first: dict[str, Any] = {}
    for k, ann in enumerate(anns):
        if not isinstance(ann, Mapping):
            raise ValueError(f"{source}: annotations[{k}] is not an object")
        ann_id = ann.get("id")
        raw_ann_ids.append(ann_id if _is_int(ann_id) else None)
        why = _annotation_problem(ann, known_images, known_cats)
        if why == _MALFORMED:  # a broken file, not a quirk: no score is computed on it
            raise ValueError(f"{source}: annotation {f'id {ann_id!r}' if ann_id is not None else f'[{k}]'}: bbox must "
                             f"be 4 finite numbers [x, y, w, h], got {ann.get('bbox')!r}")
        if why:
            dropped[why] += 1
            first.setdefault(why, f"id {ann_id!r}" if ann_id is not None else f"annotations[{k}]")
            continue
        new = dict(ann)
        new["id"] = len(out) + 1
        if id_map is not None:
            new["image_id"] = id_map[ann.get("image_id")]
        area = ann.get("area")
        if not (_is_number(area) and math.isfinite(area)):
            w, h = ann["bbox"][2], ann["bbox"][3]
            new["area"] = float(w) * float(h)
            dropped["area missing or not a finite number (set to w * h)"] += 1
            first.setdefault("area missing or not a finite number (set to w * h)",
                             f"id {ann_id!r}" if ann_id is not None else f"annotations[{k}]")
        out.append(new)
    for why, n in sorted(dropped.items()):
        action = "" if why.startswith("area") else "; left out of the evaluation"
        logger.warning("%s: %d annotation(s) %s (first: %s)%s", source, n, why, first[why], action)
    return out, raw_ann_ids


def _warn_annotation_ids(raw_ann_ids: list[int | None], source: str) -> None:
    """Warn when the annotation ids repeat or are not positive integers (the evaluation renumbers them)."""
    ids = [i for i in raw_ann_ids if i is not None]
    repeated = _first_repeat(ids)
    if repeated is not None:
        logger.warning("%s: annotation id %r is used %d times (%d ids repeat); renumbered 1..N for the evaluation "
                       "(pycocotools would score the boxes sharing an id as copies of one box)", source, repeated,
                       ids.count(repeated), len(ids) - len(set(ids)))
    elif len(ids) < len(raw_ann_ids) or any(i <= 0 for i in ids):
        bad = next((i for i in raw_ann_ids if i is None or i <= 0), None)
        logger.warning("%s: annotation ids must be positive integers (found %r); renumbered 1..N for the evaluation "
                       "(pycocotools reads id 0 as 'unmatched' and would count a detection of that box as a false "
                       "positive)", source, bad)


def load_coco_ground_truth(source: Any) -> CocoGroundTruth:
    """Check, repair and index COCO ground truth for the evaluator (see the module docstring).

    ``source``: an annotation file path, its dict, a pycocotools or faster-coco-eval ``COCO`` (its
    ``dataset`` is read, not changed), a ``COCODetection`` (its ``ann_file``) or a :class:`CocoGroundTruth`
    (returned as it is). ValueError (one
    line naming the file) for what cannot be repaired."""
    from faster_coco_eval import COCO

    if isinstance(source, CocoGroundTruth):
        return source
    dataset = _coco_dataset(source)
    if dataset is not None:  # a COCODetection: its annotation file
        source = Path(dataset.ann_file)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with _gc_paused():
            data, where = _read_json(path), str(path)
    elif isinstance(source, Mapping):
        data, where = source, "the ground-truth dict"
    elif isinstance(getattr(source, "dataset", None), Mapping):
        data = source.dataset
        where = f"the ground truth ({type(source).__module__.split('.')[0]} COCO object)"
    else:
        raise ValueError(f"COCO ground truth must be an annotation file, its dict or a COCO object, "
                         f"got {type(source).__name__}")
    with _gc_paused():
        clean, id_map = _check_ground_truth(data, where)
        coco = COCO(clean, print_function=_quiet)
    names = {c["id"]: str(c.get("name", c["id"])) for c in clean["categories"]}
    return CocoGroundTruth(coco, where, id_map, names)


def _gt_id_sets(coco_gt: Any) -> tuple[set, set]:
    """(image ids, category ids) of any ground-truth source, in the file's own ids, without repairing it."""
    if isinstance(coco_gt, CocoGroundTruth):
        imgs = set(coco_gt.image_id_map) if coco_gt.image_id_map is not None else set(coco_gt.coco.getImgIds())
        return imgs, set(coco_gt.cat_names)
    if hasattr(coco_gt, "getImgIds") and hasattr(coco_gt, "getCatIds"):
        return set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    dataset = _coco_dataset(coco_gt)
    if dataset is not None:
        coco_gt = Path(dataset.ann_file)
    data = _read_json(Path(coco_gt)) if isinstance(coco_gt, (str, os.PathLike)) else coco_gt
    if not isinstance(data, Mapping):
        raise ValueError(f"COCO ground truth must be an annotation file, its dict or a COCO object, "
                         f"got {type(data).__name__}")

    def ids(key: str) -> set:
        out = set()
        for rec in data.get(key) or []:
            try:
                out.add(rec.get("id") if isinstance(rec, Mapping) else None)
            except TypeError:
                pass
        return out
    return ids("images"), ids("categories")


# --------------------------------------------------------------------------------------------------
# results


def load_coco_results(path: str | os.PathLike, coco_gt: Any) -> list[dict]:
    """Read and check a COCO results JSON. ValueError (one line, naming the file and entry) for a
    missing file, bad JSON, a missing key, an unknown image/category id or a malformed bbox.
    ``coco_gt``: any ground truth :func:`load_coco_ground_truth` takes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: results file not found")
    try:
        text = path.read_text(encoding="utf-8")
        with _gc_paused():
            results = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a JSON list of detections, got {type(results).__name__}")
    img_ids, cat_ids = _gt_id_sets(coco_gt)
    # all entries at once; JSON true/false/null anywhere (never in a valid results file's numbers) or any
    # other problem: entry by entry, so that the error names the first bad one
    text_has_literals = any(word in text for word in ("true", "false", "null"))
    if text_has_literals or not _results_look_valid(results, img_ids, cat_ids):
        for k, r in enumerate(results):
            _check_result(r, f"{path}: entry {k}", img_ids, cat_ids)
    one = sum(1 for r in results if (r["bbox"][2] < 0) != (r["bbox"][3] < 0))
    both = sum(1 for r in results if r["bbox"][2] < 0 and r["bbox"][3] < 0)
    if one or both:
        logger.warning("%s: %d detection(s) with a negative width or height and %d with both negative; they overlap "
                       "nothing. As in pycocotools, the first kind have a negative area, outside every area range, "
                       "and are ignored; the second kind count as false positives", path, one, both)
    return results


def _results_look_valid(results: list, img_ids: set, cat_ids: set) -> bool:
    """True when every entry is an object with integer (or, for string-id ground truth, string) known ids, a
    bbox of 4 finite numbers and a finite number as score: :func:`_check_result` in bulk (booleans excepted,
    which the caller rules out)."""
    try:
        image_id = np.asarray([r["image_id"] for r in results])
        cats = np.asarray([r["category_id"] for r in results])
        bbox = np.asarray([r["bbox"] for r in results])
        score = np.asarray([r["score"] for r in results])
    except (KeyError, TypeError, IndexError, ValueError):
        return False
    n = len(results)
    if n == 0:
        return True
    if not (all(isinstance(r, dict) for r in results) and image_id.shape == (n,) and cats.shape == (n,)
            and bbox.shape == (n, 4) and score.shape == (n,) and cats.dtype.kind in "iu"
            and image_id.dtype.kind in "iuU" and bbox.dtype.kind in "iuf" and score.dtype.kind in "iuf"):
        return False
    if not (np.isfinite(bbox).all() and np.isfinite(score).all()):
        return False
    if not (set(np.unique(cats).tolist()) <= cat_ids and set(np.unique(image_id).tolist()) <= img_ids):
        return False
    if image_id.dtype.kind == "U" and not all(type(r["image_id"]) is str for r in results):
        return False  # numpy turned integers into strings
    return all(type(b) is list for b in (r["bbox"] for r in results))


def _check_result(r: Any, where: str, img_ids: set, cat_ids: set) -> None:
    if not isinstance(r, dict):
        raise ValueError(f"{where}: expected an object, got {type(r).__name__}")
    for key in RESULT_KEYS:
        if key not in r:
            raise ValueError(f"{where}: missing key {key!r}")
    for key, known in (("image_id", img_ids), ("category_id", cat_ids)):
        try:
            ok = r[key] in known and not isinstance(r[key], bool)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{where}: {key} {r[key]!r} is not in the ground truth")
    if not _is_box(r["bbox"]) or not isinstance(r["bbox"], list):
        raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {r['bbox']!r}")
    if not _is_number(r["score"]) or not math.isfinite(r["score"]):
        raise ValueError(f"{where}: score must be a finite number, got {r['score']!r}")


def _results_arrays(results: Any, gt: CocoGroundTruth) -> dict[str, np.ndarray]:
    """Results (a list of dicts or the compact mapping) as checked arrays with the evaluator's image ids."""
    if isinstance(results, Mapping):
        missing = [k for k in RESULT_KEYS if k not in results]
        if missing:
            raise ValueError(f"COCO results: the compact results lack {missing}")
        image_id = np.asarray(results["image_id"]).reshape(-1)
        arrays = {"category_id": np.asarray(results["category_id"]).reshape(-1),
                  "bbox": np.asarray(results["bbox"], np.float64),
                  "score": np.asarray(results["score"], np.float64).reshape(-1)}
        n = len(image_id)
        if arrays["bbox"].size == 0:
            arrays["bbox"] = arrays["bbox"].reshape(0, 4)
        if arrays["bbox"].shape != (n, 4) or len(arrays["category_id"]) != n or len(arrays["score"]) != n:
            raise ValueError(f"COCO results: image_id [{n}], category_id {list(arrays['category_id'].shape)}, "
                             f"bbox {list(arrays['bbox'].shape)} and score {list(arrays['score'].shape)} do not "
                             "match (bbox is [D, 4])")
        if n and (arrays["category_id"].dtype.kind not in "iu"
                  or (gt.image_id_map is None and image_id.dtype.kind not in "iu")):
            raise ValueError("COCO results: image_id and category_id must be integer arrays")
        if not (np.isfinite(arrays["bbox"]).all() and np.isfinite(arrays["score"]).all()):
            raise ValueError("COCO results: a bbox or score is not finite")
    else:
        results = list(results)
        arrays = _list_arrays(results, gt)
        image_id = arrays.pop("image_id")
    if gt.image_id_map is not None:
        try:
            image_id = np.asarray([gt.image_id_map[i] for i in image_id.tolist()], np.int64)
        except (KeyError, TypeError):
            bad = next(i for i in image_id.tolist() if not isinstance(i, str) or i not in gt.image_id_map)
            raise ValueError(f"COCO results: image_id {bad!r} is not in the ground truth ({gt.source})") from None
    image_id = image_id.astype(np.int64)
    arrays["image_id"] = image_id
    arrays["category_id"] = arrays["category_id"].astype(np.int64)
    known = np.asarray(sorted(gt.coco.getImgIds()), np.int64)
    bad = ~np.isin(image_id, known)
    if bad.any():
        raise ValueError(f"COCO results: image_id {int(image_id[bad][0])} is not in the ground truth ({gt.source})")
    bad = ~np.isin(arrays["category_id"], np.asarray(sorted(gt.cat_names), np.int64))
    if bad.any():
        raise ValueError(f"COCO results: category_id {int(arrays['category_id'][bad][0])} is not in the ground "
                         f"truth ({gt.source})")
    return arrays


def _list_arrays(results: list, gt: CocoGroundTruth) -> dict[str, np.ndarray]:
    """A results list as arrays, checked in bulk; on any problem the entries are checked one by one, so the
    error names the first bad entry."""
    n = len(results)
    try:
        image_id = np.asarray([r["image_id"] for r in results], dtype=object if gt.image_id_map else None)
        cats = np.asarray([r["category_id"] for r in results])
        bbox = np.asarray([r["bbox"] for r in results], np.float64)
        score = np.asarray([r["score"] for r in results], np.float64)
        ok = (bbox.shape == (n, 4) and score.shape == (n,) and cats.dtype.kind in "iu"
              and (gt.image_id_map is not None or image_id.dtype.kind in "iu")
              and bool(np.isfinite(bbox).all()) and bool(np.isfinite(score).all()))
    except (KeyError, TypeError, ValueError):
        ok = False
    if n == 0:
        return {"image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64), "bbox": np.zeros((0, 4)),
                "score": np.zeros(0)}
    if not ok:
        img_ids, cat_ids = _gt_id_sets(gt)
        for k, r in enumerate(results):
            _check_result(r, f"COCO results: entry {k}", img_ids, cat_ids)
        raise ValueError("COCO results: entries are not all {image_id: int, category_id: int, bbox: [x, y, w, h], "
                         "score: number}")
    return {"image_id": image_id, "category_id": cats, "bbox": bbox, "score": score}


def _results_coco(gt: CocoGroundTruth, arrays: Mapping[str, np.ndarray]):
    """The detections as a faster-coco-eval ``COCO``, exactly as ``COCO.loadRes`` of pycocotools and
    faster-coco-eval sees a bbox results list (``area = w * h``, ids 1..D in results order, not crowd),
    without the box polygons that bbox evaluation never reads."""
    from faster_coco_eval import COCO

    bbox = arrays["bbox"]
    area = (bbox[:, 2] * bbox[:, 3]).tolist()
    anns = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "iscrowd": 0}
            for k, (i, c, b, s, a) in enumerate(zip(arrays["image_id"].tolist(), arrays["category_id"].tolist(),
                                                    bbox.tolist(), arrays["score"].tolist(), area))]
    dt = COCO(print_function=_quiet)
    dt.dataset = {"images": gt.coco.dataset["images"], "categories": gt.coco.dataset["categories"],
                  "annotations": anns}
    dt.createIndex()
    return dt


def evaluate_coco_results(coco_gt: Any, results: Any, *, img_ids: Sequence | None = None,
                          cat_ids: Sequence[int] | None = None,
                          curves_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """COCOeval (bbox) of ``results`` with faster-coco-eval: the 12 statistics and ``per_category``.

    ``coco_gt``: an annotation file path, its dict, a pycocotools or faster-coco-eval ``COCO``, or a
    :class:`CocoGroundTruth` (checked and repaired first, see the module docstring). ``results``: a list of
    COCO result dicts or the compact mapping of arrays (:data:`RESULT_KEYS`), in the file's own ids.
    ``img_ids`` / ``cat_ids`` restrict the evaluated images / categories (default: all; a detector trained
    on some classes is scored on those). With no detections every statistic with ground truth is 0.
    ``curves_path``: also draw each category's precision/recall curve at IoU 0.5 there (one PNG)."""
    from faster_coco_eval import COCOeval_faster

    gt = load_coco_ground_truth(coco_gt)
    all_cats = sorted(gt.cat_names)
    cat_ids = sorted(set(int(c) for c in cat_ids)) if cat_ids is not None else all_cats
    unknown = sorted(set(cat_ids) - set(all_cats))
    if unknown:
        raise ValueError(f"COCO eval: category ids {unknown} are not in the ground truth ({gt.source})")
    if not cat_ids:
        raise ValueError(f"COCO eval: no category to evaluate ({gt.source})")
    eval_imgs = _eval_image_ids(gt, img_ids)
    if not eval_imgs:  # an evaluator that saw no image (as before faster-coco-eval: zeros, not an error)
        logger.warning("COCO eval: no image to evaluate; every metric is 0")
        metrics: dict[str, Any] = {k: 0.0 for k in COCO_STAT_NAMES}
        metrics["per_category"] = {gt.cat_names[c]: 0.0 for c in cat_ids}
        return metrics
    arrays = _results_arrays(results, gt)
    if len(arrays["score"]) == 0:
        logger.warning("COCO eval: no detections; every metric with ground truth is 0")
    with _gc_paused():
        ev = COCOeval_faster(gt.coco, _results_coco(gt, arrays), iouType="bbox", print_function=_quiet)
        ev.params.imgIds = eval_imgs
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: (None if v < 0 else float(v)) for k, v in zip(COCO_STAT_NAMES, ev.stats)}
    metrics["per_category"] = _per_category_ap(ev, gt)
    if curves_path is not None:
        plot_pr_curves(coco_pr_curves(ev), curves_path, title=f"COCO AP@[.5,.95] {100 * (metrics['AP'] or 0):.1f}; "
                       "curves at IoU 0.5")
    return metrics


def _eval_image_ids(gt: CocoGroundTruth, img_ids: Sequence | None) -> list[int]:
    """The evaluator's (integer) ids of the images to evaluate, sorted: all of ``gt``'s for None, else
    ``img_ids`` (the file's own ids, string ones mapped) each once; ValueError for an id not in ``gt``."""
    if img_ids is None:
        return sorted(gt.coco.getImgIds())
    wanted = list(dict.fromkeys(img_ids))
    if gt.image_id_map is not None:
        missing = [i for i in wanted if i not in gt.image_id_map]
        eval_imgs = sorted(gt.image_id_map[i] for i in wanted if i in gt.image_id_map)
    else:
        missing = [i for i in wanted if i not in gt.coco.imgs]
        eval_imgs = sorted(int(i) for i in wanted if i in gt.coco.imgs)
    if missing:
        raise ValueError(f"COCO eval: image id {missing[0]!r} is not in the ground truth ({gt.source})")
    return eval_imgs


def _per_category_ap(ev: Any, gt: CocoGroundTruth) -> dict[str, float | None]:
    """``{category name: AP@[.5,.95]}`` of an accumulated COCOeval, all areas, most detections; None for a
    category without ground truth."""
    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max dets]
    precision = np.asarray(ev.eval["precision"])
    per_cat = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_cat[gt.cat_names[int(cat_id)]] = float(p.mean()) if p.size else None
    return per_cat


# --------------------------------------------------------------------------------------------------
# the evaluator


def _coco_dataset(obj: Any) -> Any:
    """The COCODetection behind ``obj`` (itself, or the COCO part of a ConcatDetection), else None."""
    if hasattr(obj, "label_to_cat_id") and hasattr(obj, "ann_file"):
        return obj
    parts = getattr(obj, "datasets", None)
    if parts and all(hasattr(d, "label_to_cat_id") and hasattr(d, "ann_file") for d in parts):
        files = sorted({str(d.ann_file) for d in parts})
        if len(files) > 1:
            raise ValueError(f"COCOEvaluator: the data set joins several COCO files ({', '.join(files)}); "
                             "evaluate them one at a time")
        return parts[0]
    return None


class COCOEvaluator:
    """Accumulates detections as compact COCO results and evaluates them with :func:`evaluate_coco_results`.

    ``coco_gt``: a ``COCODetection`` (or a ``ConcatDetection`` of one): its ``ann_file`` is the ground
    truth and its ``label_to_cat_id`` the label map; or any ground truth :func:`load_coco_ground_truth`
    takes, with ``label_to_cat_id`` (detres label 1..K -> COCO category id). A file is read lazily, at
    :meth:`evaluate`, on rank 0 only. :meth:`process` takes targets (``image_id`` = COCO image id) and
    outputs in ORIGINAL image pixels (xyxy, labels 1..K). :meth:`evaluate` gathers the ranks' arrays
    (image ids, boxes, scores, category ids), evaluates on rank 0 and returns the same metrics on every
    rank; with ``output_dir`` rank 0 writes ``coco_instances_results.json`` there (boxes rounded to 3
    decimals and scores to 5, the numbers that are evaluated).
    """

    def __init__(self, coco_gt: Any, *, label_to_cat_id: Mapping[int, int] | None = None,
                 output_dir: str | os.PathLike | None = None, curves_path: str | os.PathLike | None = None) -> None:
        dataset = _coco_dataset(coco_gt)
        if dataset is not None:
            coco_gt = Path(dataset.ann_file)
            label_to_cat_id = dataset.label_to_cat_id if label_to_cat_id is None else label_to_cat_id
        if label_to_cat_id is None:
            raise ValueError("COCOEvaluator: pass label_to_cat_id (or a COCODetection as the ground truth)")
        self._gt_source = coco_gt
        self._gt: CocoGroundTruth | None = coco_gt if isinstance(coco_gt, CocoGroundTruth) else None
        self.label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        if not self.label_to_cat_id or min(self.label_to_cat_id) < 1:
            raise ValueError(f"COCOEvaluator: label_to_cat_id must map labels 1..K, got {self.label_to_cat_id}")
        self._lut = np.full(max(self.label_to_cat_id) + 1, -1, np.int64)
        for label, cat in self.label_to_cat_id.items():
            self._lut[label] = cat
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.curves_path = curves_path
        self.reset()

    @property
    def ground_truth(self) -> CocoGroundTruth:
        """The checked ground truth (loaded on first use)."""
        if self._gt is None:
            self._gt = load_coco_ground_truth(self._gt_source)
            unknown = sorted(set(self.label_to_cat_id.values()) - set(self._gt.cat_names))
            if unknown:
                raise ValueError(f"COCOEvaluator: label_to_cat_id maps to category ids not in the ground truth "
                                 f"({self._gt.source}): {unknown}")
        return self._gt

    def reset(self) -> None:
        self._img_ids: list[int] = []
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per image: category ids, xywh, scores

    def process(self, targets: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(targets) != len(outputs):
            raise ValueError(f"COCOEvaluator.process: {len(targets)} targets but {len(outputs)} outputs")
        for target, out in zip(targets, outputs):
            image_id = int(target["image_id"])
            boxes = torch.as_tensor(out["boxes"]).detach().cpu().double().numpy().reshape(-1, 4)
            scores = torch.as_tensor(out["scores"]).detach().cpu().double().numpy().reshape(-1)
            labels = torch.as_tensor(out["labels"]).detach().cpu().numpy().astype(np.int64).reshape(-1)
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(f"COCOEvaluator: image {image_id} has {len(boxes)} boxes, {len(scores)} scores and "
                                 f"{len(labels)} labels")
            inside = (labels >= 0) & (labels < len(self._lut))
            cats = np.where(inside, self._lut[np.where(inside, labels, 0)], -1)
            if (cats < 0).any():
                raise ValueError(f"COCOEvaluator: image {image_id} has a detection with unknown label "
                                 f"{int(labels[cats < 0][0])}")
            xywh = np.round(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), 3)
            self._img_ids.append(image_id)
            self._parts.append((cats, xywh, np.round(scores, 5)))

    def _local_arrays(self) -> dict[str, np.ndarray]:
        """This rank's images and detections as flat arrays (what is gathered): ``images`` [I] (processing
        order), per detection ``det_index`` (into ``images``), ``category_id``, ``bbox`` (xywh), ``score``."""
        def cat(k: int, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([p[k] for p in self._parts]) if self._parts else empty

        counts = np.asarray([len(p[2]) for p in self._parts], np.int64)
        return {"images": np.asarray(self._img_ids, np.int64), "det_index": np.repeat(np.arange(len(counts)), counts),
                "category_id": cat(0, np.zeros(0, np.int64)), "bbox": cat(1, np.zeros((0, 4))),
                "score": cat(2, np.zeros(0))}

    @staticmethod
    def _merge(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The ranks' arrays as one results mapping (:data:`RESULT_KEYS`, rank then processing order) plus
        ``images``; an image processed more than once keeps its first detections only."""
        images = np.concatenate([p["images"] for p in parts])
        offsets = np.cumsum([0] + [len(p["images"]) for p in parts])
        occurrence = np.concatenate([p["det_index"] + off for p, off in zip(parts, offsets)])
        first = np.zeros(len(images), bool)
        first[np.unique(images, return_index=True)[1]] = True
        keep = first[occurrence]
        merged = {k: np.concatenate([p[k] for p in parts])[keep] for k in ("category_id", "bbox", "score")}
        merged["image_id"] = images[occurrence[keep]]
        merged["images"] = images[first]
        return merged

    def evaluate(self) -> dict[str, Any]:
        parts = all_gather_objects(self._local_arrays())
        payload: tuple[str, Any] = ("ok", None)
        error: Exception | None = None
        if is_main_process():
            merged = self._merge(parts)
            try:
                if self.output_dir is not None:
                    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in
                               zip(merged["image_id"].tolist(), merged["category_id"].tolist(),
                                   merged["bbox"].tolist(), merged["score"].tolist())]
                    atomic_write_text(self.output_dir / "coco_instances_results.json", json.dumps(results))
                    del results
                metrics = evaluate_coco_results(self.ground_truth, merged, img_ids=merged["images"].tolist(),
                                                cat_ids=sorted(self.label_to_cat_id.values()),
                                                curves_path=self.curves_path)
                payload = ("ok", metrics)
            except ValueError as exc:  # every rank raises it, instead of waiting for rank 0
                payload, error = ("error", str(exc)), exc
        payload = broadcast_object(payload)
        if payload[0] == "error":
            raise error if error is not None else ValueError(payload[1])
        return payload[1]


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
