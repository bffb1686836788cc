"""PASCAL VOC detection data (2007, 2012 and any tree in the same layout).

A VOC tree (``dataset_dir``) holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/<split>.txt``. All annotations of a split are parsed once, when the dataset is
built (a few thousand small XML files take about a second), so ``aspect_ratios()`` and the
evaluator's ground truth cost no image decode.

Box convention. VOC XML boxes are 1-based and inclusive (``xmin=1`` is the first pixel column,
``xmax=W`` the last). They are converted as detectron2 does: ``(xmin - 1, ymin - 1, xmax, ymax)``,
i.e. 0-based continuous coordinates where a box covering columns 0..W-1 is ``[0, W]``.
The VOC evaluator converts back with ``x1 + 1, y1 + 1`` and measures with the devkit's +1 widths.
"""
from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detres.data.dataset import ConcatDetection, DetectionDataset
from detres.data.transforms import read_image_rgb

__all__ = [
    "VOC_CLASSES",
    "VOCAnnotation",
    "VOCDetection",
    "parse_voc_xml",
    "find_voc_dir",
    "build_voc",
]

logger = logging.getLogger(__name__)

#: Image file extensions looked for in JPEGImages/ (labelling tools export PNG too).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp")

#: Boxes narrower or lower than this many pixels as written in the XML (``xmax - xmin``, ``ymax - ymin``) are
#: degenerate: dropped with a warning (``xmin = xmax``: a click without a drag; below 1: a sub-pixel box).
MIN_BOX_EXTENT = 1.0

#: The 20 PASCAL VOC classes, in the devkit's order. Label ``i + 1`` is ``VOC_CLASSES[i]``.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass(frozen=True)
class VOCAnnotation:
    """One parsed XML file.

    ``boxes``: float32 [N, 4] xyxy, 0-based (detectron2 convention: xmin-1, ymin-1, xmax, ymax).
    ``labels``: int64 [N] in 1..K. ``difficult``: bool [N]. ``width``/``height``: from ``<size>``
    (0 when the file has no usable size).
    """

    image_id: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int
    height: int
    filename: str = ""  # <filename> (base name only: <path> fields of other machines are ignored)


def _text(node: ET.Element | None) -> str | None:
    if node is None or node.text is None:
        return None
    return node.text.strip()


def parse_voc_xml(path: str | os.PathLike, class_names: Sequence[str], *, image_id: str | None = None) -> VOCAnnotation:
    """Parse one VOC annotation file.

    Tolerated quirks: a missing or empty ``<difficult>`` means 0; coordinates may be floats;
    a file may have no ``<object>``; unknown fields are ignored. Raises ``ValueError`` naming the
    file (and the object number) for malformed XML, an unknown class or a missing coordinate.
    """
    path = Path(path)
    image_id = image_id if image_id is not None else path.stem
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read annotation ({exc.strerror or exc})") from None
    class_to_label = {name: i + 1 for i, name in enumerate(class_names)}
    width, height = _image_size(root, path)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object"), start=1):
        box, label, diff = _parse_object(obj, k, path, class_names, class_to_label)
        boxes.append(box)
        labels.append(label)
        difficult.append(diff)

    filename = os.path.basename((_text(root.find("filename")) or "").replace("\\", "/"))
    return VOCAnnotation(
        filename=filename,
        image_id=image_id,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        width=width,
        height=height,
    )


def _image_size(root: ET.Element, path: Path) -> tuple[int, int]:
    """``(width, height)`` from ``<size>``; 0 for a missing size or field."""
    width = height = 0
    size = root.find("size")
    if size is not None:
        try:
            width = int(float(_text(size.find("width")) or 0))
            height = int(float(_text(size.find("height")) or 0))
        except ValueError:
            raise ValueError(f"{path}: <size> has a non-numeric width/height") from None
    return width, height


def _parse_object(obj: ET.Element, k: int, path: Path, class_names: Sequence[str], class_to_label: dict[str, int]
                  ) -> tuple[tuple[float, float, float, float], int, bool]:
    """``(box xyxy 0-based continuous px, label 1..K, difficult)`` of the ``k``-th ``<object>`` (1-based)."""
    name = _text(obj.find("name"))
    if name is None:
        raise ValueError(f"{path}: object {k} has no <name>")
    if name not in class_to_label:
        near = [c for c in class_names if c.lower() == name.lower()]
        if near:
            raise ValueError(f"{path}: object {k} has class {name!r}; class names are case-sensitive: did you "
                             f"mean {near[0]!r}? (fix the file, or list {name!r} in data.classes)")
        raise ValueError(f"{path}: object {k} has unknown class {name!r} (known: {', '.join(class_names)})")
    diff_text = _text(obj.find("difficult"))
    try:
        diff = bool(int(float(diff_text))) if diff_text else False
    except ValueError:
        raise ValueError(f"{path}: object {k} has a non-numeric <difficult> {diff_text!r}") from None
    bnd = obj.find("bndbox")
    if bnd is None:
        raise ValueError(f"{path}: object {k} ({name}) has no <bndbox>")
    x1, y1, x2, y2 = coords = _bndbox_coords(bnd, f"{path}: object {k} ({name})")
    if not (x2 >= x1 and y2 >= y1):
        raise ValueError(f"{path}: object {k} ({name}) has xmax < xmin or ymax < ymin: {coords}")
    # 1-based inclusive -> 0-based continuous (detectron2's convention).
    return (x1 - 1.0, y1 - 1.0, x2, y2), class_to_label[name], diff


def _bndbox_coords(bnd: ET.Element, where: str) -> list[float]:
    """``[xmin, ymin, xmax, ymax]`` of a ``<bndbox>`` as finite floats (VOC's 1-based inclusive pixels);
    ``where`` starts the error message."""
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        value = _text(bnd.find(tag))
        if value is None:
            raise ValueError(f"{where} has no <{tag}>")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{where} has a non-numeric <{tag}> {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{where} has a non-finite <{tag}> {value!r}")
        coords.append(number)
    return coords


def read_image_set(path: str | os.PathLike) -> list[str]:
    """Ids of ``ImageSets/Main/<split>.txt`` as strings (leading zeros kept, first column only).
    An id listed twice is a ValueError naming the file, the id and both lines (it would be evaluated twice)."""
    path = Path(path)
    if not path.is_file():
        year = next((y for y in ("2007", "2012") if f"VOC{y}" in path.parts), None)
        raise ValueError(f"{path}: image set file not found"
                         + (f" (python tools/get_data.py voc{year} downloads the VOC{year} release)" if year else ""))
    ids, first_line = [], {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                if fields[0] in first_line:
                    raise ValueError(f"{path}:{lineno}: id {fields[0]!r} is listed twice (first on line "
                                     f"{first_line[fields[0]]})")
                first_line[fields[0]] = lineno
                ids.append(fields[0])
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from None
    return ids


def _line_of(path: Path, image_id: str) -> int:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.split()[:1] == [image_id]:
                return lineno
    return 0


class VOCDetection(DetectionDataset):
    """A VOC-layout detection data set: items are ``(image, target)``.

    Without ``transforms`` ``image`` is a numpy HWC uint8 RGB array; with the standard transforms
    it is a float32 CHW tensor in [0, 1]. ``target`` has ``boxes`` (float32 [N, 4], xyxy, 0-based),
    ``labels`` (int64 [N], 1..K), ``difficult`` (bool [N]) and ``image_id`` (str, leading zeros kept).

    ``keep_difficult=False`` (training) leaves difficult boxes out of the targets; evaluation data
    sets use ``keep_difficult=True``. The full annotation (difficult boxes included, original pixels)
    is always available from :meth:`get_annotation`, which the VOC evaluator reads.
    ``labelled=False`` reads only the image set, for splits whose labels are not public (VOC 2012 test):
    every target is empty and no XML is needed. Every listed image must exist (checked when the data set
    is built) unless ``check_images=False`` (evaluating results files needs no images).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        *,
        split: str = "trainval",
        class_names: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = False,
        transforms: Callable[[np.ndarray, dict], tuple[Any, dict]] | None = None,
        labelled: bool = True,
        check_images: bool = True,
    ) -> None:
        self.root = Path(dataset_dir)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: VOC directory not found (the VOC releases: python tools/get_data.py "
                             "voc2007 | voc2012 [--root DIR]; data/README.md shows the layout)")
        self.split = split
        self.class_names = tuple(class_names)
        self.keep_difficult = keep_difficult
        self.transforms = transforms
        set_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        self.ids: list[str] = read_image_set(set_file)
        self.labelled = labelled
        if not labelled:  # e.g. VOC 2012 test: the image set lists the images, their labels are not public
            parsed = [VOCAnnotation(i, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool),
                                    width=0, height=0) for i in self.ids]
        else:
            parsed = []
            for image_id in self.ids:
                xml = self.root / "Annotations" / f"{image_id}.xml"
                if not xml.is_file():
                    lineno = _line_of(set_file, image_id)
                    raise ValueError(f"{set_file}:{lineno}: id {image_id!r} has no annotation file {xml}")
                parsed.append(parse_voc_xml(xml, self.class_names, image_id=image_id))
        self._pack(parsed)
        self._images = self._find_images([a.filename for a in parsed])
        del parsed
        if check_images:
            self._check_images(set_file)
        if labelled:
            self._report()

    def _pack(self, parsed: Sequence[VOCAnnotation]) -> None:
        """Keep the parsed files as a few arrays (boxes, labels and difficult flags of all files, concatenated,
        with per-image offsets; sizes): DataLoader workers get them in one piece, not as 16k Python objects.
        Degenerate boxes are dropped first (:meth:`_drop_degenerate`)."""
        parsed = self._drop_degenerate(parsed)
        counts = np.asarray([len(a.labels) for a in parsed], np.int64)
        self._start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._boxes = np.concatenate([a.boxes for a in parsed]).astype(np.float32) if parsed else np.zeros((0, 4), np.float32)
        self._labels = np.concatenate([a.labels for a in parsed]).astype(np.int64) if parsed else np.zeros(0, np.int64)
        self._difficult = np.concatenate([a.difficult for a in parsed]).astype(bool) if parsed else np.zeros(0, bool)
        self._wh = np.asarray([(a.width, a.height) for a in parsed], np.int64).reshape(-1, 2)

    def _drop_degenerate(self, parsed: Sequence[VOCAnnotation]) -> list[VOCAnnotation]:
        """``parsed`` without the boxes less than :data:`MIN_BOX_EXTENT` px across as written in the XML
        (``xmax - xmin`` or ``ymax - ymin``): ``xmin = xmax`` is a click without a drag in a labelling tool and a
        sub-pixel box marks nothing; kept, they train as 1x1-px objects. Each is warned (file and object number)
        and listed in ``self.dropped_boxes`` for tools/check_data.py."""
        self.dropped_boxes: list[str] = []
        out = []
        for ann in parsed:
            b = ann.boxes.astype(np.float64)  # 0-based: xmin - 1, ymin - 1, xmax, ymax
            bad = ((b[:, 2] - b[:, 0] - 1) < MIN_BOX_EXTENT) | ((b[:, 3] - b[:, 1] - 1) < MIN_BOX_EXTENT)
            for k in np.flatnonzero(bad):
                x1, y1, x2, y2 = (float(v) for v in b[k])
                what = (f"{self.root / 'Annotations' / (ann.image_id + '.xml')}: object {k + 1} "
                        f"({self.class_names[int(ann.labels[k]) - 1]}) is less than {MIN_BOX_EXTENT:g} px across "
                        f"(xmin {x1 + 1:g}, ymin {y1 + 1:g}, xmax {x2:g}, ymax {y2:g}); dropped")
                self.dropped_boxes.append(what)
                if len(self.dropped_boxes) <= 10:
                    logger.warning("%s", what)
            keep = ~bad
            out.append(ann if keep.all() else VOCAnnotation(
                ann.image_id, ann.boxes[keep], ann.labels[keep], ann.difficult[keep], width=ann.width,
                height=ann.height, filename=ann.filename))
        if len(self.dropped_boxes) > 10:
            logger.warning("%s/%s: %d degenerate boxes dropped in all (the first 10 are named above)", self.root.name,
                           self.split, len(self.dropped_boxes))
        return out

    def _find_images(self, filenames: Sequence[str]) -> list[str | None]:
        """Each item's image: the XML's <filename> if it is in JPEGImages/, else <id> with a usual image
        extension; a file whose name differs only in case is taken too (labelling tools on case-insensitive
        file systems write such names), with a warning. None where nothing is found."""
        folder = self.root / "JPEGImages"
        try:
            names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        except OSError:
            names = set()
        lower = {n.lower(): n for n in names}
        found: list[str | None] = []
        for image_id, filename in zip(self.ids, filenames):
            candidates = ([filename] if filename else []) + [image_id + e for e in IMAGE_EXTENSIONS]
            name = next((c for c in candidates if c in names), None)
            if name is None:
                name = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
                if name is not None:
                    logger.warning("%s: no %s; using %s (the names differ only in case)", folder, candidates[0], name)
            found.append(name)
        return found

    def _check_images(self, set_file: Path) -> None:
        """Every listed image must exist now, not when the loader reaches it hours later."""
        missing = [i for i, p in enumerate(self._images) if p is None]
        if missing:
            first = self.ids[missing[0]]
            raise ValueError(f"{set_file}:{_line_of(set_file, first)}: image {self.root / 'JPEGImages' / (first + '.jpg')} "
                             "does not exist (nor with another image extension)"
                             + (f" ({len(missing)} listed images are missing)" if len(missing) > 1 else ""))

    def _report(self) -> None:
        """Log what the split holds and warn about boxes lying entirely outside their image (the transforms
        drop them, so an image can lose all its objects)."""
        owner = np.repeat(np.arange(len(self.ids)), np.diff(self._start))
        wh = self._wh[owner]
        b = self._boxes
        known = (wh[:, 0] > 0) & (wh[:, 1] > 0)
        out = known & ((b[:, 0] >= wh[:, 0]) | (b[:, 1] >= wh[:, 1]) | (b[:, 2] <= 0) | (b[:, 3] <= 0))
        outside = np.bincount(owner[out], minlength=len(self.ids))
        per_image = np.diff(self._start)
        for i in np.flatnonzero(outside)[:10]:
            logger.warning("%s: %d box(es) lie entirely outside the image; they are dropped%s",
                           self.root / "Annotations" / f"{self.ids[i]}.xml", outside[i],
                           " and the image has no object left" if outside[i] == per_image[i] else "")
        n_out, n_files = int(outside.sum()), int((outside > 0).sum())
        logger.info("%s/%s: %d images, %d objects (%d difficult%s)%s", self.root.name, self.split, len(self.ids),
                    len(self._labels), int(self._difficult.sum()),
                    "" if self.keep_difficult else ", left out of training",
                    f"; {n_out} boxes in {n_files} files lie outside their image and are dropped" if n_out else "")

    def __len__(self) -> int:
        return len(self.ids)

    def get_annotation(self, index: int) -> VOCAnnotation:
        """The parsed XML of item ``index`` (all boxes, difficult ones included, original pixels)."""
        s, e = int(self._start[index]), int(self._start[index + 1])
        w, h = self._wh[index]
        return VOCAnnotation(self.ids[index], self._boxes[s:e], self._labels[s:e], self._difficult[s:e],
                             width=int(w), height=int(h), filename=self._images[index] or "")

    def image_path(self, index: int) -> Path:
        """The image file of item ``index`` (see :meth:`_find_images`)."""
        name = self._images[index]
        return self.root / "JPEGImages" / (name if name is not None else f"{self.ids[index]}.jpg")

    def aspect_ratios(self) -> list[float]:
        """``width / height`` per item from the XML ``<size>`` (1.0 where the size is missing)."""
        wh = self._wh.astype(np.float64)
        ok = (wh[:, 0] > 0) & (wh[:, 1] > 0)
        return np.where(ok, wh[:, 0] / np.where(ok, wh[:, 1], 1.0), 1.0).tolist()

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        """The image (HWC uint8 RGB) and its target (difficult boxes left out unless ``keep_difficult``)."""
        ann = self.get_annotation(index)
        path = self.image_path(index)
        image = read_image_rgb(path)
        if ann.width > 0 and ann.height > 0 and image.shape[:2] != (ann.height, ann.width):
            raise ValueError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} but its annotation says {ann.width}x{ann.height}"
            )
        keep = np.ones(len(ann.labels), dtype=bool) if self.keep_difficult else ~ann.difficult
        target = {
            "boxes": torch.from_numpy(ann.boxes[keep]),
            "labels": torch.from_numpy(ann.labels[keep]),
            "difficult": torch.from_numpy(ann.difficult[keep]),
            "image_id": ann.image_id,
        }
        return image, target

    def __repr__(self) -> str:
        return f"VOCDetection({str(self.root)!r}, split={self.split!r}, images={len(self)})"


def find_voc_dir(data_root: str | os.PathLike, year: str | int) -> Path:
    """``<data_root>/VOC<year>`` or ``<data_root>/VOCdevkit/VOC<year>``, whichever exists."""
    data_root = Path(data_root)
    for candidate in (data_root / f"VOC{year}", data_root / "VOCdevkit" / f"VOC{year}"):
        if candidate.is_dir():
            return candidate
    raise ValueError(f"{data_root}: neither VOC{year}/ nor VOCdevkit/VOC{year}/ exists"
                     + (f" (python tools/get_data.py voc{year} --root {data_root} downloads it)"
                        if str(year) in ("2007", "2012") else " (data/README.md shows the layout)"))


def build_voc(
    data_root: str | os.PathLike,
    names: Sequence[str] = ("2007_trainval",),
    *,
    transforms: Callable | None = None,
    keep_difficult: bool = False,
    class_names: Sequence[str] = VOC_CLASSES,
    labelled: bool = True,
) -> Dataset:
    """Build VOC data sets: a name is a split of ``data_root`` itself when ``data_root`` is a VOC-layout
    folder (``ImageSets/Main/<name>.txt`` exists: your own data, any folder name, no year), else a devkit
    name ``"<year>_<split>"`` (e.g. ``("2007_trainval", "2012_trainval")`` for 07+12) under ``VOC<year>/`` or
    ``VOCdevkit/VOC<year>/``. One name gives a :class:`VOCDetection`, several a :class:`ConcatDetection`.
    ``labelled=False``: the splits' labels are not public (VOC 2012 test); only the image set is read."""
    if isinstance(names, str):
        names = (names,)
    if not names:
        raise ValueError("build_voc: names is empty")
    parts = []
    for name in names:
        if (Path(data_root) / "ImageSets" / "Main" / f"{name}.txt").is_file():
            folder, split = Path(data_root), name  # data_root is itself a VOC-layout folder (CVAT, labelImg exports)
        else:
            year, sep, split = name.partition("_")
            if not sep or not year.isdigit() or not split:
                raise ValueError(f"{Path(data_root) / 'ImageSets' / 'Main' / (name + '.txt')}: not found, and "
                                 f"{name!r} is not a VOC devkit name '<year>_<split>' (e.g. '2007_trainval')")
            folder = find_voc_dir(data_root, year)
        parts.append(
            VOCDetection(
                folder, split=split, class_names=class_names,
                keep_difficult=keep_difficult, transforms=transforms, labelled=labelled,
            )
        )
    return parts[0] if len(parts) == 1 else ConcatDetection(parts)
