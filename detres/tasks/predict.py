"""The job of ``tools/predict.py``: images in, pictures and a COCO-results JSON out.

- Inputs: files, folders (searched recursively) and globs (``**`` matches any depth). A file that cannot
  be decoded is reported by name and skipped; the others are predicted.
- Pictures: ``<out>/<path relative to the images' common folder>.png``, so ``a/x.jpg`` and ``b/x.jpg`` give
  ``a/x.png`` and ``b/x.png`` (and ``x.jpg`` beside ``x.png`` give ``x.jpg.png`` and ``x.png.png``). They draw
  the detections scoring at least ``vis_thresh``; a picture with none says so and names the best score.
- ``predictions.json``: the COCO results format (``[{"image_id", "category_id", "bbox": [x, y, w, h] in
  original pixels, "score", "category"}]``) with EVERY detection the model returns (its test threshold,
  0.05 in the paper configs), as a mAP computation needs. ``category_id``: the data's own category ids (the
  checkpoint's label -> category-id map of a COCO-JSON run; else the annotation file's category of the same
  name; else the label 1..K). ``image_id``: the annotation file's id of the image (``ann_file``, else the run's
  COCO test set when it lists every image), matched by ``file_name`` relative to the image folder, else by
  the base name when that is unique; otherwise the image's path.
- Never replaces an input image; replaces an existing file in ``out_dir`` only if an earlier prediction wrote
  it (listed in ``<out>/.predict_files.json``) or ``overwrite``.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from detres.data.coco import load_coco
from detres.data.voc import IMAGE_EXTENSIONS
from detres.evaluation.visualize import draw_detections, save_png
from detres.tasks.predictor import Predictor, as_rgb_array
from detres.utils.io import atomic_write_json

__all__ = ["expand_images", "output_names", "coco_image_ids", "category_ids", "predict_files", "PredictSummary",
           "MANIFEST"]

logger = logging.getLogger("detres")

#: The list of files an earlier prediction wrote into the output folder (those it may replace).
MANIFEST = ".predict_files.json"
_EXTENSIONS = {e.lower() for e in IMAGE_EXTENSIONS}


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in _EXTENSIONS


def expand_images(items: Sequence[str]) -> list[str]:
    """Files, folders (their images at any depth, sorted) and globs (``**`` recursive) -> image paths, each
    once; ValueError naming the item that matched nothing."""
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if _is_image_name(p) and p.is_file())
            if not found:
                raise ValueError(f"{item}: folder holds no images at any depth ({', '.join(sorted(_EXTENSIONS))})")
            out += found
        elif os.path.isfile(item):
            out.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise ValueError(f"{item}: no file matches")
            out += found
        else:
            raise ValueError(f"{item}: image not found")
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(images: Sequence[str]) -> list[str]:
    """The picture of each image: its path relative to the images' common folder, ``.png`` for its suffix
    (the suffix kept, ``x.jpg.png``, where two images would otherwise share a name). POSIX separators."""
    if not images:
        return []
    paths = [Path(os.path.abspath(p)) for p in images]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    rel = [p.relative_to(root) for p in paths]
    plain = [r.with_suffix(".png").as_posix() for r in rel]
    count: dict[str, int] = defaultdict(int)
    for name in plain:
        count[name.lower()] += 1
    return [name if count[name.lower()] == 1 else r.as_posix() + ".png" for name, r in zip(plain, rel)]


def coco_image_ids(coco: Any, image_root: str | os.PathLike | None) -> Callable[[str], int | None]:
    """``f(image path) -> image id`` of a pycocotools COCO: by ``file_name`` relative to ``image_root``, else by
    the base name when exactly one image has it; None when the image is not in the file."""
    by_rel: dict[str, int] = {}
    by_base: dict[str, list[int]] = defaultdict(list)
    for img in coco.dataset.get("images", []):
        name = Path(str(img["file_name"])).as_posix()
        by_rel[os.path.normpath(name)] = img["id"]
        by_base[Path(name).name].append(img["id"])
    root = os.path.realpath(image_root) if image_root is not None else None

    def lookup(path: str) -> int | None:
        if root is not None:
            rel = os.path.relpath(os.path.realpath(path), root)
            if not rel.startswith(os.pardir) and os.path.normpath(rel) in by_rel:
                return by_rel[os.path.normpath(rel)]
        ids = by_base.get(Path(path).name, [])
        return ids[0] if len(ids) == 1 else None
    return lookup


def category_ids(predictor: Predictor, coco: Any | None = None, *, source: str = "") -> dict[int, int]:
    """label (1..K) -> the ``category_id`` to write: the checkpoint's map (checked against ``coco``'s categories
    by id and name), else ``coco``'s category of each class's name, else the label itself."""
    names = predictor.class_names
    cats = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])} if coco is not None else None
    if predictor.label_to_cat_id:
        ids = dict(predictor.label_to_cat_id)
        if cats is not None:
            for label, cid in sorted(ids.items()):
                want = names[label - 1] if 1 <= label <= len(names) else None
                if cats.get(cid) != want:
                    raise ValueError(f"{source}: category id {cid} is {cats.get(cid)!r} there but {want!r} in the "
                                     "checkpoint; predict against the annotation file the model was trained with")
        return ids
    if cats is not None:
        by_name = {n: cid for cid, n in cats.items()}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{source}: the model's classes {missing} are not categories of this file "
                             f"(it has {sorted(by_name)})")
        return {i + 1: by_name[n] for i, n in enumerate(names)}
    return {i + 1: i + 1 for i in range(len(names))}


@dataclass
class PredictSummary:
    """What :func:`predict_files` did: the JSON entries, the pictures written, the images skipped (path ->
    why) and where ``image_id`` and ``category_id`` came from."""
    results: list[dict]
    pictures: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    image_ids: str = "image paths"
    category_ids: str = "labels 1..K"


def _check_outputs(out_dir: Path, names: Sequence[str], images: Sequence[str], overwrite: bool) -> None:
    """ValueError if writing ``names`` (+ predictions.json) into ``out_dir`` would replace an input image, or
    a file no earlier prediction wrote (unless ``overwrite``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    inputs = {os.path.realpath(p) for p in images}
    manifest = out_dir / MANIFEST
    ours: set[str] = set()
    if manifest.is_file():
        try:
            ours = set(json.loads(manifest.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            ours = set()
    for name in [*names, "predictions.json"]:
        target = out_dir / name
        if not target.exists():
            continue
        if os.path.realpath(target) in inputs:
            raise ValueError(f"--out {out_dir}: the picture {target} would replace the input image itself; "
                             "choose another --out")
        if name not in ours and not overwrite:
            raise ValueError(f"--out {out_dir}: {target} exists and was not written by tools/predict.py; choose "
                             "another --out or pass --overwrite")


def predict_files(predictor: Predictor, images: Sequence[str], out_dir: str | os.PathLike, *,
                  vis_thresh: float | None = None, ann_file: str | os.PathLike | None = None,
                  image_root: str | os.PathLike | None = None, overwrite: bool = False) -> PredictSummary:
    """Run ``predictor`` on each image; write its picture and ``out_dir/predictions.json`` (see the module
    docstring). ``vis_thresh``: what pictures draw (default the config's ``test.vis_thresh``). ``ann_file``:
    the COCO annotation file the images belong to (every image must be in it); ``image_root``: its image
    folder (default the file's folder). Without ``ann_file`` the run's COCO test set is used when it lists
    every image. An undecodable image is skipped (``summary.skipped``), unless none can be read (ValueError);
    ValueError for the rest."""
    out = Path(out_dir)
    vis = predictor.vis_thresh if vis_thresh is None else float(vis_thresh)
    if not 0.0 <= vis <= 1.0:
        raise ValueError(f"--vis-thresh: must lie in [0, 1], got {vis}")
    names = output_names(images)
    _check_outputs(out, names, images, overwrite)
    summary = PredictSummary(results=[], pictures=[])
    coco, lookup, source = _coco_of_images(predictor, images, ann_file, image_root)
    cat_of = category_ids(predictor, coco, source=source)
    if lookup is not None:
        summary.image_ids = f"image ids of {source}"
    if predictor.label_to_cat_id:
        summary.category_ids = "the data's category ids (from the checkpoint)"
    elif coco is not None:
        summary.category_ids = f"category ids of {source} (by class name)"
    for path, name in zip(images, names):
        _predict_one(predictor, path, out / name, vis, lookup, cat_of, summary)
    if summary.skipped and not summary.pictures:  # nothing could be read: a plain user error
        first, why = next(iter(summary.skipped.items()))
        more = len(summary.skipped) - 1
        raise ValueError(why + (f" (and {more} other image{'s' if more > 1 else ''}: none could be read)" if more else ""))
    atomic_write_json(out / "predictions.json", summary.results)
    _update_manifest(out, names)
    return summary


def _coco_of_images(predictor: Predictor, images: Sequence[str], ann_file: str | os.PathLike | None,
                    image_root: str | os.PathLike | None) -> tuple[Any | None, Callable[[str], int | None] | None, str]:
    """``(COCO, image path -> image id, the annotation file's name)`` the images belong to: ``ann_file``
    (ValueError for an image not in it), else the run's COCO test set when it lists every image, else
    ``(None, None, "")`` (image ids are then the paths)."""
    if ann_file is not None:
        coco = load_coco(ann_file)
        lookup = coco_image_ids(coco, image_root if image_root is not None else Path(ann_file).parent)
        unknown = [p for p in images if lookup(p) is None]
        if unknown:
            raise ValueError(f"{unknown[0]}: not an image of {ann_file} (matched by file_name relative to "
                             f"{image_root or Path(ann_file).parent}, or by a base name listed once)"
                             + (f"; {len(unknown)} images are not" if len(unknown) > 1 else ""))
        return coco, lookup, str(ann_file)
    test = predictor.test_annotations()
    if test is not None:
        test_coco = load_coco(test[0])
        test_lookup = coco_image_ids(test_coco, test[1])
        if all(test_lookup(p) is not None for p in images):
            return test_coco, test_lookup, str(test[0])
        logger.info("the images are not all in the run's test set %s: image_id is the image's path", test[0])
    return None, None, ""


def _predict_one(predictor: Predictor, path: str, picture: Path, vis: float,
                 lookup: Callable[[str], int | None] | None, cat_of: dict[int, int], summary: PredictSummary) -> None:
    """Detect in the image ``path``, draw the detections scoring ``>= vis`` into ``picture`` and add them to
    ``summary.results`` (COCO results format: ``bbox`` xywh in original-image pixels); an image that cannot
    be decoded goes to ``summary.skipped`` with a warning."""
    try:
        rgb = as_rgb_array(path)
    except ValueError as e:
        summary.skipped[str(path)] = str(e)
        logger.warning("skipped: %s", e)
        return
    det = predictor(rgb)
    boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
    drawn = draw_detections(rgb, boxes, labels, scores, predictor.class_names, score_thresh=vis)
    summary.pictures.append(save_png(drawn, picture))
    image_id: Any = lookup(path) if lookup is not None else str(path)
    for (x1, y1, x2, y2), lab, s in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
        summary.results.append({"image_id": image_id, "category_id": int(cat_of[int(lab)]),
                                "category": predictor.class_names[int(lab) - 1], "score": round(float(s), 5),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})


def _update_manifest(out: Path, names: Sequence[str]) -> None:
    """Add this run's pictures and ``predictions.json`` to ``out``'s :data:`MANIFEST` (the files that
    ``--overwrite`` may replace); an unreadable manifest starts afresh."""
    previous = []
    if (out / MANIFEST).is_file():
        try:
            previous = list(json.loads((out / MANIFEST).read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            previous = []
    atomic_write_json(out / MANIFEST, sorted(set(previous) | set(names) | {"predictions.json"}))
