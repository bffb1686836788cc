"""COCO detection data through pycocotools.

Category ids (COCO's 1..90 with gaps) are mapped to contiguous labels 1..K in increasing id order
(0 is the background); ``label_to_cat_id`` / ``cat_id_to_label`` go there and back, and the
COCO evaluator writes results with the original ids.

Boxes: COCO ``[x, y, w, h]`` (continuous pixels) become xyxy ``[x, y, x + w, y + h]``, clipped to
the image; boxes with no width or height after that are dropped. Crowd regions (``iscrowd=1``) are
never targets. With ``train=True`` images left with no box are skipped; with ``train=False`` every
image is kept (the evaluator needs them all).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from detres.data.dataset import DetectionDataset
from detres.data.transforms import read_image_rgb

__all__ = ["COCODetection", "load_coco", "find_coco_files"]

logger = logging.getLogger(__name__)


def load_coco(ann_file: str | os.PathLike):
    """Load a COCO annotation file with pycocotools (quietly). ValueError names the file on failure."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise ValueError(f"{path}: annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError) as exc:  # json errors are ValueErrors
        raise ValueError(f"{path}: not a valid COCO annotation file ({type(exc).__name__}: {exc})") from None


def _box_of(ann: dict, width: float, height: float) -> tuple[tuple[float, float, float, float] | None, str]:
    """(xyxy box clipped to the image, "") or (None, why it is not a training box)."""
    if ann.get("iscrowd", 0):
        return None, "crowd"
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, "malformed bbox"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, "malformed bbox"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "non-finite bbox"
    if w <= 0 or h <= 0:
        return None, "zero or negative size"
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2 = min(x + w, width) if width > 0 else x + w
    y2 = min(y + h, height) if height > 0 else y + h
    if x2 <= x1 or y2 <= y1:
        return None, "outside the image"
    return (x1, y1, x2, y2), ""


def _boxes_from_anns(anns: list[dict], width: float, height: float, cat_id_to_label: dict[int, int],
                     dropped: Counter | None = None):
    boxes, labels = [], []
    for ann in anns:
        if ann.get("category_id") not in cat_id_to_label:  # a category left out by data.classes
            if dropped is not None:
                dropped["of a class not in data.classes"] += 1
            continue
        box, why = _box_of(ann, width, height)
        if box is None:
            if dropped is not None:
                dropped[why] += 1
            continue
        boxes.append(box)
        labels.append(cat_id_to_label[ann["category_id"]])
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))


class COCODetection(DetectionDataset):
    """Items ``(image, target)`` with ``target = {"boxes" float32 [N,4] xyxy 0-based, "labels" int64
    [N] in 1..K, "image_id": int (the COCO id)}``.

    Attributes: ``coco`` (pycocotools COCO), ``ids`` (image ids, int), ``class_names`` (category
    names in label order), ``label_to_cat_id``, ``cat_id_to_label``.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, *, train: bool,
                 transforms: Callable[[np.ndarray, dict], tuple[Any, dict]] | None = None, coco=None,
                 check_images: bool = True, class_names: Sequence[str] | None = None) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise ValueError(f"{self.image_dir}: image directory not found")
        self.ann_file = Path(ann_file)
        self.coco = coco if coco is not None else load_coco(ann_file)
        self.train = train
        self.transforms = transforms
        all_cat_ids = sorted(self.coco.getCatIds())
        if class_names is None:  # the file's categories, in id order
            cat_ids = all_cat_ids
        else:  # the user's classes, matched by name; label i + 1 is class_names[i]
            by_name = {c["name"]: c["id"] for c in self.coco.loadCats(all_cat_ids)}
            unknown = [n for n in class_names if n not in by_name]
            if unknown:
                raise ValueError(f"{self.ann_file}: data.classes {unknown} are not categories of this file "
                                 f"(it has {sorted(by_name)})")
            cat_ids = [by_name[n] for n in class_names]
        self.class_names = tuple(c["name"] for c in self.coco.loadCats(cat_ids))
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(cat_ids)}
        self.cat_id_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        self._all_cat_ids = set(all_cat_ids)
        self._check_records()
        ids = sorted(self.coco.getImgIds())
        dropped: Counter = Counter()
        kept = []
        for img_id in ids:
            info = self.coco.imgs[img_id]
            anns = self.coco.imgToAnns.get(img_id, [])
            boxes, _ = _boxes_from_anns(anns, info.get("width", 0), info.get("height", 0), self.cat_id_to_label,
                                        dropped)
            if len(boxes) or not train:  # training skips images without a box; evaluation needs them all
                kept.append(img_id)
        self.ids: list[int] = kept
        if check_images:
            missing = [i for i in self.ids if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()]
            if missing:
                raise ValueError(f"{self.image_dir / self.coco.imgs[missing[0]]['file_name']}: image listed in "
                                 f"{self.ann_file} does not exist"
                                 + (f" ({len(missing)} listed images are missing)" if len(missing) > 1 else ""))
        left_out = dropped.pop("of a class not in data.classes", 0)
        if left_out:
            logger.info("%s: %d annotations of categories not in data.classes left out", self.ann_file, left_out)
        problems = {k: v for k, v in dropped.items() if k != "crowd"}
        if problems:
            logger.warning("%s: annotations left out of the targets: %s", self.ann_file,
                           ", ".join(f"{n} {why}" for why, n in sorted(problems.items())))
        logger.info("%s: %d images%s, %d categories, %d crowd regions ignored", self.ann_file, len(self.ids),
                    f" ({len(ids) - len(self.ids)} without a box skipped)" if train else "", len(cat_ids),
                    dropped["crowd"])

    def _check_records(self) -> None:
        """Image ids listed twice, and annotations of unknown images or categories, are errors naming the file."""
        images = self.coco.dataset.get("images", [])
        seen: set = set()
        for img in images:
            if img["id"] in seen:
                raise ValueError(f"{self.ann_file}: image id {img['id']!r} is listed twice")
            seen.add(img["id"])
        for ann in self.coco.dataset.get("annotations", []):
            if ann.get("category_id") not in self._all_cat_ids:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id')!r} has category_id "
                                 f"{ann.get('category_id')!r}, which is not in 'categories'")
            if ann.get("image_id") not in seen:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id')!r} refers to image_id "
                                 f"{ann.get('image_id')!r}, which is not in 'images'")

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> list[float]:
        """``width / height`` per item from the annotation file's image records."""
        out = []
        for img_id in self.ids:
            info = self.coco.imgs[img_id]
            w, h = info.get("width", 0), info.get("height", 0)
            out.append(w / h if w and h else 1.0)
        return out

    def get_target(self, index: int) -> dict:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        boxes, labels = _boxes_from_anns(self.coco.imgToAnns.get(img_id, []), info.get("width", 0),
                                         info.get("height", 0), self.cat_id_to_label)
        return {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "image_id": int(img_id)}

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        """The image (HWC uint8 RGB) and its target (crowd regions and degenerate boxes left out)."""
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        path = self.image_dir / info["file_name"]
        image = read_image_rgb(path)
        w, h = info.get("width", 0), info.get("height", 0)
        if w and h and image.shape[:2] != (h, w):
            raise ValueError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but {self.ann_file} says {w}x{h}")
        return image, self.get_target(index)

    def __repr__(self) -> str:
        return f"COCODetection({str(self.ann_file)!r}, train={self.train}, images={len(self)})"


def find_coco_files(data_root: str | os.PathLike, split: str = "val2017") -> tuple[Path, Path]:
    """``(<data_root>/coco/<split>, <data_root>/coco/annotations/instances_<split>.json)``."""
    base = Path(data_root) / "coco"
    image_dir, ann = base / split, base / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        raise ValueError(f"{ann}: COCO annotation file not found")
    return image_dir, ann
