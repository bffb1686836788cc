"""COCO detection data in a few numpy arrays.

A train2017-sized file (118k images, 860k boxes with polygons, 354 MB of JSON) is parsed once with the
standard ``json`` module, converted and checked with vectorised numpy, and the parsed objects are dropped:
the data set keeps per-image ids, sizes and file names (one UTF-8 buffer), and per-box xyxy boxes, labels
and crowd flags, grouped by image through an offsets array. DataLoader workers receive these arrays (tens of
MB) instead of millions of Python objects, whose reference counts would copy every page a worker touches.
The COCO evaluator reads the ground truth from ``ann_file`` itself.

Category ids (COCO's 1..90 with gaps) are mapped to contiguous labels 1..K in increasing id order (0 is the
background); ``label_to_cat_id`` / ``cat_id_to_label`` go there and back, and the COCO evaluator writes
results with the original ids.

Boxes: COCO ``[x, y, w, h]`` (continuous pixels) become xyxy ``[x, y, x + w, y + h]``, clipped to the image;
boxes with no width or height after that are dropped (counted, warned). Crowd regions (``iscrowd=1``) are
kept with their flag; ``crowd="ignore"`` makes them never targets (torchvision's and Detectron's choice),
``crowd="as_ground_truth"`` makes them training targets like any box, as py-faster-rcnn's end-to-end training
does (its ``lib/datasets/coco.py:267`` gives a crowd box its class, and ``lib/roi_data_layer/minibatch.py:37``
takes every box with a class as ground truth; the overlaps of -1, ``lib/datasets/coco.py:272``, serve its
precomputed-proposal training and its image filter). With ``train=True`` images with no non-crowd box are
skipped (pfr's filter drops them too: an overlap of -1 makes no RoI foreground or background); with
``train=False`` every image is kept (the evaluator needs them all) and crowd regions are never targets (the
evaluator reads them from the file).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import msgspec
import numpy as np
import torch

from detres.config import DataConfig
from detres.data.dataset import DetectionDataset
from detres.data.transforms import read_image_rgb

__all__ = ["COCODetection", "COCOFile", "load_coco", "read_coco_json", "find_coco_files"]

logger = logging.getLogger(__name__)

_DATA = DataConfig()  # the one default of data.coco_crowd
#: ``data.coco_crowd`` values: what training does with COCO's crowd regions.
COCO_CROWD = ("ignore", "as_ground_truth")


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


class _Image(msgspec.Struct):
    id: Any = None
    file_name: Any = None
    width: Any = 0
    height: Any = 0


class _Annotation(msgspec.Struct):  # "segmentation", "area", ... are skipped by the decoder, never built
    id: Any = None
    image_id: Any = None
    category_id: Any = None
    bbox: Any = None
    iscrowd: Any = 0


class _Category(msgspec.Struct):
    id: Any = None
    name: Any = None


class COCOFile(msgspec.Struct):
    """The fields of a COCO annotation file that detection reads (other keys are parsed and skipped)."""
    images: list[_Image]
    categories: list[_Category]
    annotations: list[_Annotation] = []


def read_coco_json(ann_file: str | os.PathLike) -> COCOFile:
    """Decode the fields detection needs from a COCO annotation file (msgspec: polygons and other keys are
    skipped without building Python objects, so a 354 MB train2017 file decodes in seconds and little memory).
    ValueError naming the file when it is missing, not UTF-8, not JSON, or not an object with ``images`` and
    ``categories`` lists of objects (``annotations`` may be absent: image-info files)."""
    path = Path(ann_file)
    if not path.is_file():
        raise ValueError(f"{path}: annotation file not found")
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError(f"{path}: UTF-16 text; COCO files are UTF-8 (save it as UTF-8)")
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]  # a UTF-8 byte-order mark, as some Windows tools write
    try:
        return msgspec.json.decode(raw, type=COCOFile)
    except msgspec.ValidationError as exc:
        if "out of range" not in str(exc):
            raise ValueError(f"{path}: not a COCO annotation file ({exc})") from None
    except msgspec.DecodeError:
        pass
    # Python's json module also writes NaN and Infinity, which strict JSON lacks: read such a file the slow way
    # (its non-finite boxes are then left out with a warning), and report real syntax errors with line and column
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    try:
        return msgspec.convert(data, COCOFile)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: not a COCO annotation file ({exc})") from None


def _int_ids(values: list, path: Path, what: str) -> np.ndarray:
    """int64 array of ``values`` (ids); ValueError naming the first value that is not an integer."""
    try:
        arr = np.asarray(values) if values else np.zeros(0, np.int64)
    except OverflowError:
        arr = np.zeros(0, object)
    if arr.dtype.kind in "iu" and (arr.dtype.kind == "i" or not len(arr) or arr.max() < 2 ** 63):
        return arr.astype(np.int64, copy=False)
    kinds = {type(v).__name__ for v in values}
    bad = next(k for k, v in enumerate(values)
               if not isinstance(v, int) or isinstance(v, bool) or not -2 ** 63 <= v < 2 ** 63)
    mixed = " (the file mixes " + " and ".join(sorted(kinds)) + ")" if len(kinds) > 1 else ""
    kind = "an integer of at most 64 bits" if isinstance(values[bad], int) and not isinstance(values[bad], bool) \
        else "an integer"
    raise ValueError(f"{path}: {what}[{bad}] is {values[bad]!r:.40}, not {kind}{mixed}; COCO ids are integers")


def _field(records: list, key: str) -> list:
    return [getattr(r, key) for r in records]


def _bbox_array(bboxes: list, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 [M, 4] xywh with NaN rows for malformed entries, bool [M] malformed)``. The fast path is one
    numpy conversion; only a file with a malformed entry is walked box by box."""
    try:
        arr = np.asarray(bboxes, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 4 or (arr.size == 0 and not bboxes):
            return arr.reshape(-1, 4), np.zeros(len(arr.reshape(-1, 4)), bool)
    except (ValueError, TypeError):
        pass
    arr = np.full((len(bboxes), 4), np.nan)
    bad = np.zeros(len(bboxes), bool)
    for k, b in enumerate(bboxes):
        ok = isinstance(b, (list, tuple)) and len(b) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        if ok:
            arr[k] = b
        else:
            bad[k] = True
    return arr, bad


class COCODetection(DetectionDataset):
    """Items ``(image, target)`` with ``target = {"boxes" float32 [N,4] xyxy 0-based pixels, "labels" int64
    [N] in 1..K, "image_id": int (the COCO id)}``.

    Attributes: ``ann_file``, ``image_dir``, ``ids`` (image ids, int, in file order), ``class_names`` (category
    names in label order), ``label_to_cat_id``, ``cat_id_to_label``, ``num_annotations`` (per category id,
    in the whole file). ``class_names`` selects categories by name (label ``i + 1`` is ``class_names[i]``);
    annotations of other categories are left out and counted.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, *, train: bool,
                 transforms: Callable[[np.ndarray, dict], tuple[Any, dict]] | None = None,
                 check_images: bool = True, class_names: Sequence[str] | None = None,
                 crowd: str = _DATA.coco_crowd) -> None:
        if crowd not in COCO_CROWD:
            raise ValueError(f"data.coco_crowd must be one of {COCO_CROWD}, got {crowd!r}")
        self.crowd_as_ground_truth = train and crowd == "as_ground_truth"
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise ValueError(f"{self.image_dir}: image directory not found (COCO file names are looked up there; "
                             "for your own JSON set data.image_root to the folder holding the images; the COCO "
                             "releases: python tools/get_data.py coco2014 | coco2017)")
        self.ann_file = Path(ann_file)
        self.train = train
        self.transforms = transforms
        data = read_coco_json(self.ann_file)
        self._read_categories(data.categories, class_names)
        self._read_images(data.images)
        dropped = self._read_annotations(data.annotations)
        del data
        self._select(dropped)
        if check_images:
            self._check_images()

    # ---------------------------------------------------------------------------------------------
    # building (each step validates what it converts)
    # ---------------------------------------------------------------------------------------------
    def _read_categories(self, cats: list, class_names: Sequence[str] | None) -> None:
        path = self.ann_file
        ids = _int_ids(_field(cats, "id"), path, "categories' id")
        names = _field(cats, "name")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{path}: category id {int(uniq[counts > 1][0])} is listed twice in 'categories'")
        by_id = dict(zip(ids.tolist(), (str(n) for n in names)))
        all_ids = sorted(by_id)
        if class_names is None:  # the file's categories, in id order
            cat_ids = all_ids
        else:  # the user's classes, matched by name
            by_name = {n: i for i, n in by_id.items()}
            unknown = [n for n in class_names if n not in by_name]
            if unknown:
                raise ValueError(f"{path}: data.classes {unknown} are not categories of this file "
                                 f"(it has {sorted(by_name)})")
            cat_ids = [by_name[n] for n in class_names]
        if not cat_ids:
            raise ValueError(f"{path}: 'categories' is empty")
        self.class_names = tuple(by_id[c] for c in cat_ids)
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self._all_cat_ids = np.asarray(all_ids, np.int64)
        # category id -> label (0: left out by data.classes), as a sorted lookup table
        self._cat_label = np.asarray([self.cat_id_to_label.get(c, 0) for c in all_ids], np.int32)
        self._cat_names = by_id

    def _read_images(self, images: list) -> None:
        path = self.ann_file
        ids = _int_ids(_field(images, "id"), path, "images' id")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{path}: image id {int(uniq[counts > 1][0])} is listed twice")
        names = _field(images, "file_name")
        if not all(isinstance(n, str) and n for n in names):
            bad = next(k for k, n in enumerate(names) if not (isinstance(n, str) and n))
            raise ValueError(f"{path}: images[{bad}] (id {int(ids[bad])}) has no file_name string: {names[bad]!r}")
        sizes = []
        for key in ("width", "height"):
            values = _field(images, key)
            arr = np.asarray(values) if values else np.zeros(0, np.int64)
            if arr.dtype.kind not in "iuf" or (arr.size and not np.isfinite(arr).all()) or (arr < 0).any():
                bad = next((k for k, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, (int, float))
                            or not math.isfinite(v) or v < 0), 0)
                raise ValueError(f"{path}: images[{bad}] (id {int(ids[bad])}) has {key} {values[bad]!r}; "
                                 "expected a non-negative number")
            sizes.append(arr.astype(np.int64))
        self._img_ids = ids
        self._img_wh = np.stack(sizes, axis=1) if len(ids) else np.zeros((0, 2), np.int64)
        encoded = [n.encode("utf-8") for n in names]
        self._name_buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self._name_end = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def _read_annotations(self, anns: list) -> Counter:
        """Per-box arrays, sorted by image (file order kept within an image); returns the counts of left-out
        annotations by reason."""
        path = self.ann_file
        img = _int_ids(_field(anns, "image_id"), path, "annotations' image_id")
        cat = _int_ids(_field(anns, "category_id"), path, "annotations' category_id")
        crowd = np.asarray([bool(c) for c in _field(anns, "iscrowd")], dtype=bool).reshape(-1)
        xywh, malformed = _bbox_array(_field(anns, "bbox"), path)
        # image and category must exist
        order = np.argsort(self._img_ids, kind="stable")
        pos = np.searchsorted(self._img_ids, img, sorter=order)
        pos = np.minimum(pos, len(order) - 1) if len(order) else pos
        img_index = order[pos] if len(order) else np.zeros(len(img), np.int64)
        unknown_img = (self._img_ids[img_index] != img) if len(order) else np.ones(len(img), bool)
        if unknown_img.any():
            k = int(np.flatnonzero(unknown_img)[0])
            raise ValueError(f"{path}: annotation {anns[k].id!r} refers to image_id {int(img[k])}, "
                             "which is not in 'images'")
        cpos = np.minimum(np.searchsorted(self._all_cat_ids, cat), len(self._all_cat_ids) - 1)
        unknown_cat = self._all_cat_ids[cpos] != cat
        if unknown_cat.any():
            k = int(np.flatnonzero(unknown_cat)[0])
            raise ValueError(f"{path}: annotation {anns[k].id!r} has category_id {int(cat[k])}, "
                             "which is not in 'categories'")
        self.num_annotations = Counter(dict(zip(*(a.tolist() for a in np.unique(cat, return_counts=True)))))
        labels = self._cat_label[cpos]
        # boxes: xywh -> xyxy clipped to the image (where its size is known)
        dropped: Counter = Counter()
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(xywh).all(axis=1)
            positive = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
            wh = self._img_wh[img_index].astype(np.float64)
            x1, y1 = np.maximum(xywh[:, 0], 0), np.maximum(xywh[:, 1], 0)
            x2 = np.where(wh[:, 0] > 0, np.minimum(xywh[:, 0] + xywh[:, 2], wh[:, 0]), xywh[:, 0] + xywh[:, 2])
            y2 = np.where(wh[:, 1] > 0, np.minimum(xywh[:, 1] + xywh[:, 3], wh[:, 1]), xywh[:, 1] + xywh[:, 3])
            inside = (x2 > x1) & (y2 > y1)
        keep = labels > 0
        dropped["of a class not in data.classes"] = int((~keep).sum())
        for mask, why in ((malformed, "malformed bbox"), (~finite & ~malformed, "non-finite bbox"),
                          (finite & ~positive, "zero or negative size"), (finite & positive & ~inside,
                                                                          "outside the image")):
            dropped[why] = int((keep & mask & ~crowd).sum())
        keep &= finite & positive & inside
        dropped["crowd"] = int((keep & crowd).sum())
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(img_index[idx], kind="stable")]
        self._boxes = np.stack([x1, y1, x2, y2], axis=1)[idx].astype(np.float32)
        self._labels = labels[idx].astype(np.int32)
        self._crowd = crowd[idx]
        self._box_start = np.searchsorted(img_index[idx], np.arange(len(self._img_ids) + 1)).astype(np.int64)
        return dropped

    def _select(self, dropped: Counter) -> None:
        """The items: every image (evaluation) or those with a non-crowd box (training); log what was left out."""
        objects = np.concatenate([[0], np.cumsum(~self._crowd)])  # non-crowd boxes before each position
        n_obj = objects[self._box_start[1:]] - objects[self._box_start[:-1]]
        self._items = np.flatnonzero(n_obj > 0) if self.train else np.arange(len(self._img_ids))
        self.ids: list[int] = self._img_ids[self._items].tolist()
        left_out = dropped.pop("of a class not in data.classes", 0)
        if left_out:
            logger.info("%s: %d annotations of categories not in data.classes left out", self.ann_file, left_out)
        problems = {k: v for k, v in dropped.items() if k != "crowd" and v}
        if problems:
            logger.warning("%s: annotations left out of the targets: %s", self.ann_file,
                           ", ".join(f"{n} {why}" for why, n in sorted(problems.items())))
        if self.train:
            empty = [self._cat_names[c] for c in self.label_to_cat_id.values() if not self.num_annotations.get(c)]
            if empty:
                one = len(empty) == 1
                logger.warning("%s: categor%s %s %s no annotation but %s of the model (list the classes to "
                               "learn in data.classes to leave %s out)", self.ann_file, "y" if one else "ies",
                               ", ".join(map(repr, empty[:10])), "has" if one else "have",
                               "is a class" if one else "are classes", "it" if one else "them")
        skipped = len(self._img_ids) - len(self._items)
        logger.info("%s: %d images%s, %d categories, %d crowd regions %s", self.ann_file, len(self._items),
                    f" ({skipped} without a box skipped)" if self.train else "", len(self.class_names),
                    dropped.get("crowd", 0), "trained on as ground truth" if self.crowd_as_ground_truth else "ignored")

    def _check_images(self) -> None:
        """Every item's image must exist now, not when the loader reaches it hours later."""
        try:
            listed = set(os.listdir(self.image_dir))
        except OSError:
            listed = set()
        missing = [i for i in range(len(self)) if not ((n := self.file_name(i)) in listed
                                                        or ("/" in n and (self.image_dir / n).is_file()))]
        if missing:
            first = self.image_dir / self.file_name(missing[0])
            raise ValueError(f"{first}: image listed in {self.ann_file} does not exist"
                             + (f" ({len(missing)} of {len(self)} listed images are missing)" if len(missing) > 1
                                else "") + "; for your own JSON set data.image_root to the folder of the images")

    # ---------------------------------------------------------------------------------------------
    # the data-set contract
    # ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def file_name(self, index: int) -> str:
        """The image's ``file_name`` as the annotation file gives it (relative to ``image_dir``)."""
        j = int(self._items[index])
        start = int(self._name_end[j - 1]) if j else 0
        return self._name_buf[start:int(self._name_end[j])].tobytes().decode("utf-8")

    def image_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` from the annotation file (0 where it gives none)."""
        w, h = self._img_wh[self._items[index]]
        return int(w), int(h)

    def aspect_ratios(self) -> list[float]:
        """``width / height`` per item from the annotation file's image records (1.0 where unknown)."""
        wh = self._img_wh[self._items].astype(np.float64)
        ok = (wh[:, 0] > 0) & (wh[:, 1] > 0)
        return np.where(ok, wh[:, 0] / np.where(ok, wh[:, 1], 1), 1.0).tolist()

    def get_target(self, index: int) -> dict:
        """Item ``index``'s target without decoding the image (crowd regions left out, or in as ordinary boxes
        with ``crowd="as_ground_truth"`` in training)."""
        j = int(self._items[index])
        s, e = int(self._box_start[j]), int(self._box_start[j + 1])
        keep = np.ones(e - s, bool) if self.crowd_as_ground_truth else ~self._crowd[s:e]
        return {"boxes": torch.from_numpy(self._boxes[s:e][keep]),
                "labels": torch.from_numpy(self._labels[s:e][keep].astype(np.int64)),
                "image_id": int(self._img_ids[j])}

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        """The image (HWC uint8 RGB) and its target (crowd regions and degenerate boxes left out)."""
        path = self.image_dir / self.file_name(index)
        image = read_image_rgb(path)
        w, h = self.image_size(index)
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
        year = split[-4:] if split[-4:] in ("2014", "2017") else "2017"
        raise ValueError(f"{ann}: COCO annotation file not found (python tools/get_data.py coco{year} --root "
                         f"{data_root} downloads the COCO {year} release)")
    return image_dir, ann
