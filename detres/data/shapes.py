"""A small synthetic detection data set written as a real PASCAL VOC tree.

``generate_shapes_voc(root)`` draws filled circles, squares and triangles in random colours on a
noisy, textured background and writes ``JPEGImages/*.jpg``, ``Annotations/*.xml`` (VOC 1-based,
inclusive boxes) and ``ImageSets/Main/{train,trainval,test}.txt``. The demo and the tests read it
through :class:`detres.data.voc.VOCDetection`, i.e. the same code path as PASCAL VOC.

Every image is drawn from ``numpy.random.default_rng([seed, index])``, so the tree is a pure
function of the parameters: the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

__all__ = ["SHAPES_CLASSES", "generate_shapes_voc"]

#: The classes of the synthetic set; labels 1..3 in this order.
SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

_MANIFEST = "shapes_manifest.json"
_FORMAT_VERSION = 2


def _background(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Low-frequency colour blobs around `base` plus stripes plus pixel noise, uint8 HxWx3."""
    coarse = rng.normal(0, 35, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + base.astype(np.float32)
    period = rng.uniform(6, 24)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    img += stripes[..., None] * rng.uniform(5, 20)
    img += rng.normal(0, 10, size=(h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _draw_image(rng: np.random.Generator, h: int, w: int, n_objects: int, difficult_prob: float):
    """Return (BGR image, objects) with objects = [(class_name, (x1, y1, x2, y2) 0-based inclusive, difficult)]."""
    base = rng.uniform(40, 215, size=3)
    img = _background(rng, h, w, base)
    objects = []
    short = min(h, w)
    for _ in range(n_objects):
        for _attempt in range(20):
            cls = int(rng.integers(len(SHAPES_CLASSES)))
            size = int(rng.integers(max(8, short // 6), max(9, short // 2)))
            x0 = int(rng.integers(0, w - size + 1))
            y0 = int(rng.integers(0, h - size + 1))
            box = (x0, y0, x0 + size - 1, y0 + size - 1)
            if all(_iou(box, o[1]) == 0.0 for o in objects):  # no occlusion: every shape is whole
                break
        else:
            continue
        # A colour that stands out from the background (mean channel distance >= 70): the classes
        # differ by outline only, so an outline lost in the background would make labels noise.
        for _c in range(50):
            colour = rng.integers(0, 256, size=3)
            if np.abs(colour - base).mean() >= 70:
                break
        colour = tuple(int(c) for c in colour)
        mask = np.zeros((h, w), np.uint8)
        name = SHAPES_CLASSES[cls]
        if name == "circle":
            r = (size - 1) / 2.0
            cv2.circle(mask, (int(round(x0 + r)), int(round(y0 + r))), int(r), 255, -1)
        elif name == "square":
            cv2.rectangle(mask, (x0, y0), (x0 + size - 1, y0 + size - 1), 255, -1)
        else:
            pts = np.array([[x0 + (size - 1) // 2, y0], [x0, y0 + size - 1], [x0 + size - 1, y0 + size - 1]], np.int32)
            cv2.fillPoly(mask, [pts], 255)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        shade = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 8, size=(len(xs), 3)), 0, 255)
        img[ys, xs] = shade.astype(np.uint8)
        tight = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        objects.append((name, tight, bool(rng.random() < difficult_prob)))
    return img, objects


def _xml(image_id: str, h: int, w: int, objects) -> str:
    lines = [
        "<annotation>",
        "  <folder>SHAPES</folder>",
        f"  <filename>{escape(image_id)}.jpg</filename>",
        "  <source><database>detres synthetic shapes</database></source>",
        f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for name, (x1, y1, x2, y2), difficult in objects:
        # 0-based inclusive pixel indices -> VOC 1-based inclusive.
        lines += [
            "  <object>",
            f"    <name>{name}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(difficult)}</difficult>",
            f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def generate_shapes_voc(
    root: str | os.PathLike,
    *,
    num_train: int = 200,
    num_test: int = 50,
    image_size: int | tuple[int, int] = 128,
    min_objects: int = 1,
    max_objects: int = 3,
    seed: int = 0,
    difficult_prob: float = 0.0,
    jpeg_quality: int = 95,
) -> Path:
    """Write (or reuse) a VOC-format tree of synthetic shapes under ``root`` and return ``root``
    (the ``dataset_dir`` for :class:`~detres.data.voc.VOCDetection`, classes :data:`SHAPES_CLASSES`).

    ``image_size`` is ``(H, W)`` or one int for square images. Each image has between
    ``min_objects`` and ``max_objects`` non-overlapping shapes in colours that contrast with the
    background; with
    ``difficult_prob > 0`` that fraction of the objects is marked ``<difficult>1``. Train ids come
    first (``000000``...), then test ids. Idempotent: when ``root`` already holds a complete tree
    written with the same parameters (``shapes_manifest.json``), nothing is written.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if h < 16 or w < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    if num_train < 0 or num_test < 0 or not 0 <= min_objects <= max_objects:
        raise ValueError("need num_train, num_test >= 0 and 0 <= min_objects <= max_objects")
    if not 0.0 <= difficult_prob <= 1.0:
        raise ValueError(f"difficult_prob must be in [0, 1], got {difficult_prob}")
    root = Path(root)
    params = {"version": _FORMAT_VERSION, "num_train": num_train, "num_test": num_test, "image_size": [h, w],
              "min_objects": min_objects, "max_objects": max_objects, "seed": seed,
              "difficult_prob": difficult_prob, "jpeg_quality": jpeg_quality}
    manifest = root / _MANIFEST
    if _manifest_matches(manifest, params):
        return root
    _empty_tree(root, manifest)
    ids = [f"{i:06d}" for i in range(num_train + num_test)]
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        n = int(rng.integers(min_objects, max_objects + 1))
        img, objects = _draw_image(rng, h, w, n, difficult_prob)
        if not cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
            raise OSError(f"{root / 'JPEGImages' / (image_id + '.jpg')}: cannot write image")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, h, w, objects))
    main = root / "ImageSets" / "Main"
    train_ids, test_ids = ids[:num_train], ids[num_train:]
    (main / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (main / "trainval.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (main / "test.txt").write_text("".join(f"{i}\n" for i in test_ids))
    manifest.write_text(json.dumps(params))  # written last: marks the tree complete
    return root


def _manifest_matches(manifest: Path, params: dict) -> bool:
    """True when ``manifest`` exists and records exactly ``params`` (a complete tree written with them)."""
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()) == params:
                return True
        except (OSError, ValueError):
            pass
    return False


def _empty_tree(root: Path, manifest: Path) -> None:
    """Remove an earlier tree under ``root`` (its three folders and ``manifest``) and make the empty folders."""
    for sub in ("Annotations", "JPEGImages", "ImageSets"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    manifest.unlink(missing_ok=True)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
