"""Synthetic annotation files of the real data sets' sizes, for the ``scale`` benchmark.

Deterministic from a seed, written into a folder the caller owns. Image files are empty where only their
names are needed (building a data set checks that each listed image exists, it does not decode it).

- :func:`write_coco_instances`: a COCO ``instances_*.json`` (train2017: 118,287 images, 860,001 boxes with
  polygon segmentations, about 1% crowd regions with RLE masks; val2017: 5,000 images, 36,781 boxes).
- :func:`write_voc_tree`: a VOC devkit tree (VOC2007 trainval 5,011 + VOC2012 trainval 11,540 = the 16,551
  XML files of 07+12), COCO-like object counts and sizes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_coco_instances", "write_voc_tree", "TRAIN2017", "VAL2017", "VOC0712"]

#: (images, boxes) of COCO train2017 and val2017; VOC07+12 trainval image counts per year.
TRAIN2017 = (118287, 860001)
VAL2017 = (5000, 36781)
VOC0712 = {"2007": 5011, "2012": 11540}

_COCO_CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 ids


def _image_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 2] (width, height): COCO's typical 640 px longer side, landscape and portrait."""
    longer = np.full(n, 640)
    shorter = rng.integers(360, 481, n)
    portrait = rng.random(n) < 0.3
    return np.where(portrait[:, None], np.c_[shorter, longer], np.c_[longer, shorter])


def write_coco_instances(path: str | os.PathLike, num_images: int, num_boxes: int, *, seed: int = 0,
                         image_dir: str | os.PathLike | None = None, polygon_points: int = 14) -> Path:
    """Write a COCO instances file with ``num_images`` images and ``num_boxes`` annotations (80 categories
    with COCO's ids, polygon segmentations of ``polygon_points`` points, 1% crowd regions with RLE counts,
    image ids COCO-like and not contiguous). With ``image_dir``, an empty file per image is created there.
    Returns the path."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.sort(rng.choice(np.arange(1, 60 * num_images), num_images, replace=False))
    sizes = _image_sizes(rng, num_images)
    owner = np.sort(rng.integers(0, num_images, num_boxes))
    wh_img = sizes[owner].astype(np.float64)
    bw = np.minimum(np.exp(rng.normal(3.8, 1.1, num_boxes)), wh_img[:, 0] - 1)
    bh = np.minimum(np.exp(rng.normal(3.8, 1.1, num_boxes)), wh_img[:, 1] - 1)
    bx = rng.random(num_boxes) * (wh_img[:, 0] - bw)
    by = rng.random(num_boxes) * (wh_img[:, 1] - bh)
    cats = np.asarray(_COCO_CAT_IDS)[rng.integers(0, 80, num_boxes)]
    crowd = rng.random(num_boxes) < 0.01
    angles = np.linspace(0, 2 * np.pi, polygon_points, endpoint=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "detres synthetic COCO"}, "licenses": [], "images": [')
        for k in range(num_images):
            w, h = int(sizes[k, 0]), int(sizes[k, 1])
            f.write(("," if k else "") + f'{{"license": 1, "file_name": "{ids[k]:012d}.jpg", "coco_url": '
                    f'"http://images.cocodataset.org/x/{ids[k]:012d}.jpg", "height": {h}, "width": {w}, '
                    f'"date_captured": "2013-11-14 17:02:52", "flickr_url": "http://farm.example/{ids[k]}.jpg", '
                    f'"id": {int(ids[k])}}}')
        f.write('], "annotations": [')
        for j in range(num_boxes):
            x, y, w, h = bx[j], by[j], bw[j], bh[j]
            if crowd[j]:
                seg = f'{{"counts": [{int(x * h)}, {int(w * h)}, 17, 4, 220], "size": [{int(wh_img[j, 1])}, {int(wh_img[j, 0])}]}}'
            else:
                px = x + w / 2 + np.cos(angles) * w / 2
                py = y + h / 2 + np.sin(angles) * h / 2
                seg = "[[" + ", ".join(f"{a:.2f}, {b:.2f}" for a, b in zip(px, py)) + "]]"
            f.write(("," if j else "") + f'{{"segmentation": {seg}, "area": {w * h * 0.7:.2f}, "iscrowd": '
                    f'{int(crowd[j])}, "image_id": {int(ids[owner[j]])}, "bbox": [{x:.2f}, {y:.2f}, {w:.2f}, '
                    f'{h:.2f}], "category_id": {int(cats[j])}, "id": {j + 1}}}')
        f.write('], "categories": [')
        f.write(", ".join(f'{{"supercategory": "s{c % 12}", "id": {c}, "name": "class{c:02d}"}}' for c in _COCO_CAT_IDS))
        f.write("]}")
    if image_dir is not None:
        folder = Path(image_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for i in ids:
            (folder / f"{i:012d}.jpg").touch()
    return path


def write_voc_tree(root: str | os.PathLike, counts: dict[str, int] | None = None, *, seed: int = 0,
                   class_names: tuple[str, ...] | None = None) -> Path:
    """Write ``<root>/VOC<year>/{Annotations, JPEGImages (empty files), ImageSets/Main/trainval.txt}`` for
    each year in ``counts`` (default :data:`VOC0712`): about 2.9 objects per image, 12% difficult, VOC's
    500x375-like sizes. Returns ``root``."""
    from detres.data.voc import VOC_CLASSES

    names = class_names or VOC_CLASSES
    rng = np.random.default_rng(seed)
    root = Path(root)
    for year, n in (counts or VOC0712).items():
        base = root / f"VOC{year}"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        ids = [f"{year}_{k:06d}" for k in range(n)]
        for image_id in ids:
            w, h = (500, int(rng.integers(281, 376))) if rng.random() < 0.7 else (int(rng.integers(281, 376)), 500)
            objs = []
            for _ in range(1 + int(rng.poisson(1.9))):
                bw, bh = int(rng.integers(10, w)), int(rng.integers(10, h))
                x1, y1 = int(rng.integers(1, w - bw + 1)), int(rng.integers(1, h - bh + 1))
                objs.append(f"<object><name>{names[int(rng.integers(len(names)))]}</name><pose>Unspecified</pose>"
                            f"<truncated>0</truncated><difficult>{int(rng.random() < 0.12)}</difficult><bndbox>"
                            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x1 + bw - 1}</xmax><ymax>{y1 + bh - 1}</ymax>"
                            "</bndbox></object>")
            (base / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><folder>VOC{year}</folder><filename>{image_id}.jpg</filename><source><database>"
                f"synthetic</database></source><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
                f"<segmented>0</segmented>{''.join(objs)}</annotation>")
            (base / "JPEGImages" / f"{image_id}.jpg").touch()
        (base / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
