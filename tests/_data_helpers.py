"""Tiny VOC / COCO trees for the data and evaluation tests (written into tmp_path)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np


def write_voc_tree(root: Path, images: dict[str, dict], *, split: str = "test",
                   write_images: bool = True) -> Path:
    """``images``: id -> {"size": (w, h), "objects": [(name, xmin, ymin, xmax, ymax, difficult or None)]}
    (1-based VOC coordinates; difficult None leaves the tag out). Writes Annotations, JPEGImages and
    ImageSets/Main/<split>.txt under ``root`` and returns it."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for image_id, spec in images.items():
        w, h = spec.get("size", (64, 48))
        objs = []
        for name, x1, y1, x2, y2, diff in spec.get("objects", []):
            d = "" if diff is None else f"<difficult>{int(diff)}</difficult>"
            objs.append(f"<object><name>{name}</name><pose>Left</pose>{d}"
                        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        xml = (f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename>"
               f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>")
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        if write_images:
            cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.full((h, w, 3), 128, np.uint8))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


def write_results(folder: Path, per_class: dict[str, Iterable[str]]) -> Path:
    """Write comp4 results files: class -> lines (already formatted)."""
    folder.mkdir(parents=True, exist_ok=True)
    for cls, lines in per_class.items():
        (folder / f"comp4_det_test_{cls}.txt").write_text("".join(line + "\n" for line in lines))
    return folder


def write_coco(root: Path, *, cat_ids: Sequence[int] = (1, 5, 90), degenerate: bool = True) -> tuple[Path, Path, dict]:
    """A 4-image COCO set with category ids with gaps. Image 1: two boxes; image 2: one box and a
    crowd region; image 3: no annotation; image 7: only a degenerate (w=0) box (left out when
    ``degenerate=False``; a detector cannot find it, so "perfect" detections need it gone).
    Returns (image_dir, ann_file, the JSON dict)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images = [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60},
              {"id": 2, "file_name": "b.jpg", "width": 60, "height": 80},
              {"id": 3, "file_name": "c.jpg", "width": 50, "height": 50},
              {"id": 7, "file_name": "d.jpg", "width": 50, "height": 40}]
    for im in images:
        cv2.imwrite(str(image_dir / im["file_name"]), np.full((im["height"], im["width"], 3), 90, np.uint8))
    anns = [
        {"id": 10, "image_id": 1, "category_id": cat_ids[0], "bbox": [10, 5, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": cat_ids[2], "bbox": [40, 30, 35, 25], "area": 875, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": cat_ids[1], "bbox": [5, 10, 40, 50], "area": 2000, "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": cat_ids[0], "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 1},
        {"id": 14, "image_id": 7, "category_id": cat_ids[1], "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
    ]
    if not degenerate:
        anns = [a for a in anns if a["id"] != 14]
    cats = [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in cat_ids]
    data = {"images": images, "annotations": anns, "categories": cats}
    ann_file = root / "instances_test.json"
    ann_file.write_text(json.dumps(data))
    return image_dir, ann_file, data
