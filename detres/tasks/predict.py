"""The job of ``tools/predict.py``: images in, pictures and a COCO-results JSON out."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from detres.data.voc import IMAGE_EXTENSIONS
from detres.evaluation.visualize import draw_detections, save_png
from detres.tasks.predictor import Predictor, as_rgb_array
from detres.utils.io import atomic_write_json

__all__ = ["expand_images", "predict_files"]


def expand_images(items: Sequence[str]) -> list[str]:
    """Files, folders (their images, sorted) and globs -> image paths; ValueError naming what matched nothing."""
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir() if p.suffix in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise ValueError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif os.path.isfile(item):
            out.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise ValueError(f"{item}: no file matches")
            out += found
        else:
            raise ValueError(f"{item}: image not found")
    return out


def predict_files(predictor: Predictor, images: Sequence[str], out_dir: str, *, score_thresh: float = 0.5) -> list[dict]:
    """Run ``predictor`` on each image; write ``out_dir/<stem>.png`` and ``out_dir/predictions.json`` (COCO
    results format, ``image_id`` = the image's path, ``bbox`` = [x, y, w, h] in original pixels).
    Returns the JSON entries."""
    results = []
    for path in images:
        rgb = as_rgb_array(path)
        det = predictor(rgb)
        keep = det["scores"] >= score_thresh
        boxes, labels, scores = det["boxes"][keep], det["labels"][keep], det["scores"][keep]
        drawn = draw_detections(rgb, boxes, labels, scores, predictor.class_names, score_thresh=score_thresh)
        save_png(drawn, os.path.join(out_dir, f"{Path(path).stem}.png"))
        for (x1, y1, x2, y2), lab, s in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            results.append({"image_id": str(path), "category_id": int(lab),
                            "category": predictor.class_names[int(lab) - 1], "score": round(float(s), 5),
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})
    atomic_write_json(os.path.join(out_dir, "predictions.json"), results)
    return results
