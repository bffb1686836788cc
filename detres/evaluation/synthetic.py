"""Synthetic COCO evaluation inputs of a real size, for timing the evaluator against pycocotools.

:func:`synthetic_coco_eval_inputs` builds a val2017-sized ground truth (5,000 images of COCO's sizes,
COCO's 80 category ids with their gaps, about 36.8k boxes with COCO's small/medium/large mix and about
1% crowd regions) and a detector-like result (100 detections per image, scores rounded to 5 decimals so
that ties occur as they do in real results files). Deterministic from ``seed``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COCO_CATEGORY_IDS", "synthetic_coco_eval_inputs"]

#: COCO's 80 category ids (1..90 with ten gaps).
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})

# sqrt(area) is log-normal with these parameters: about 41% small (< 32^2), 35% medium, 24% large (> 96^2),
# the val2017 mix.
_LOG_SIDE_MEAN, _LOG_SIDE_STD = 3.734, 1.176


def synthetic_coco_eval_inputs(*, num_images: int = 5000, num_objects: int = 36781, num_categories: int = 80,
                               dets_per_image: int = 100, crowd_frac: float = 0.012, seed: int = 0
                               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(ground truth dict in the COCO annotation format, results list in the COCO results format)``.

    Images are 640 px on the longer side (portrait or landscape, heights/widths 360..640), as in COCO;
    boxes are ``[x, y, w, h]`` in pixels inside their image; ``area`` is ``w * h``. Categories follow a
    skewed frequency (the first, like COCO's person, about a quarter of the boxes). Detections: each
    non-crowd box is found with probability 0.8 (a copy jittered by about 10% of its size; score higher on
    average), the rest of the 100 per image are random boxes of random categories; boxes are rounded to
    3 decimals and scores to 5, like :class:`~detres.evaluation.coco.COCOEvaluator`'s results file.
    With the defaults AP is 0.19 and AP50 0.51 (seed 0).
    """
    if num_categories < 1 or num_categories > len(COCO_CATEGORY_IDS):
        raise ValueError(f"num_categories must be in 1..{len(COCO_CATEGORY_IDS)}, got {num_categories}")
    if num_images < 1 or num_objects < 0 or dets_per_image < 0:
        raise ValueError("num_images must be >= 1 and num_objects, dets_per_image >= 0")
    rng = np.random.default_rng(seed)
    cat_ids = np.asarray(COCO_CATEGORY_IDS[:num_categories], np.int64)
    cat_w = 1.0 / np.arange(1, num_categories + 1) ** 0.9
    cat_w[0] *= 3.0
    cat_w /= cat_w.sum()

    # images: 640 on the longer side
    landscape = rng.random(num_images) < 0.75
    short = rng.integers(360, 641, num_images)
    widths = np.where(landscape, 640, short)
    heights = np.where(landscape, short, 640)
    image_ids = np.sort(rng.choice(np.arange(1, 600_000), num_images, replace=False))
    images = [{"id": int(i), "file_name": f"{int(i):012d}.jpg", "width": int(w), "height": int(h)}
              for i, w, h in zip(image_ids, widths, heights)]

    # ground-truth boxes, a few images left empty
    g_img = np.sort(rng.choice(num_images, num_objects, p=_image_weights(rng, num_images)))
    side = np.exp(rng.normal(_LOG_SIDE_MEAN, _LOG_SIDE_STD, num_objects))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), num_objects))
    gw = np.minimum(side * np.sqrt(ratio), widths[g_img] - 1.0).clip(1.0)
    gh = np.minimum(side / np.sqrt(ratio), heights[g_img] - 1.0).clip(1.0)
    gx = rng.uniform(0, 1, num_objects) * (widths[g_img] - gw)
    gy = rng.uniform(0, 1, num_objects) * (heights[g_img] - gh)
    g_box = np.round(np.c_[gx, gy, gw, gh], 2)
    g_cat = rng.choice(num_categories, num_objects, p=cat_w)
    g_crowd = rng.random(num_objects) < crowd_frac
    annotations = [{"id": k + 1, "image_id": int(image_ids[i]), "category_id": int(cat_ids[c]), "bbox": b,
                    "area": round(b[2] * b[3], 4), "iscrowd": int(cr)}
                   for k, (i, c, b, cr) in enumerate(zip(g_img.tolist(), g_cat.tolist(), g_box.tolist(),
                                                         g_crowd.tolist()))]
    gt = {"info": {"description": f"detres synthetic val2017-sized set (seed {seed})"}, "images": images,
          "annotations": annotations,
          "categories": [{"id": int(c), "name": f"category{int(c)}", "supercategory": "thing"} for c in cat_ids]}

    # detections: found boxes (jittered copies), then random boxes up to dets_per_image per image
    found = np.flatnonzero(~g_crowd & (rng.random(num_objects) < 0.8))
    # at most dets_per_image found boxes per image (found is sorted by image: rank within its image)
    f_img = g_img[found]
    first = np.searchsorted(f_img, f_img)
    found = found[np.arange(len(found)) - first < dets_per_image]
    per_image_found = np.bincount(g_img[found], minlength=num_images)
    jitter = rng.normal(0, 0.1, (len(found), 4)) * np.c_[g_box[found, 2:], g_box[found, 2:]]
    f_box = g_box[found] + jitter
    f_box[:, 2:] = np.maximum(f_box[:, 2:], 1.0)
    f_cat = np.where(rng.random(len(found)) < 0.9, g_cat[found], rng.choice(num_categories, len(found), p=cat_w))
    f_score = rng.beta(4, 2, len(found))
    n_rand = dets_per_image - per_image_found
    r_img = np.repeat(np.arange(num_images), n_rand)
    r_side = np.exp(rng.normal(_LOG_SIDE_MEAN, _LOG_SIDE_STD, len(r_img)))
    r_w = np.minimum(r_side, widths[r_img] - 1.0).clip(1.0)
    r_h = np.minimum(r_side * np.exp(rng.uniform(-1, 1, len(r_img))), heights[r_img] - 1.0).clip(1.0)
    r_box = np.c_[rng.uniform(0, 1, len(r_img)) * (widths[r_img] - r_w),
                  rng.uniform(0, 1, len(r_img)) * (heights[r_img] - r_h), r_w, r_h]
    r_cat = rng.choice(num_categories, len(r_img), p=cat_w)
    r_score = rng.beta(1.2, 6, len(r_img))

    d_img = np.r_[g_img[found], r_img]
    order = np.argsort(d_img, kind="stable")  # results grouped by image, as a detector writes them
    d_img = d_img[order]
    d_box = np.round(np.r_[f_box, r_box][order], 3)
    d_cat = cat_ids[np.r_[f_cat, r_cat][order]]
    d_score = np.round(np.r_[f_score, r_score][order], 5)
    results = [{"image_id": int(image_ids[i]), "category_id": c, "bbox": b, "score": s}
               for i, c, b, s in zip(d_img.tolist(), d_cat.tolist(), d_box.tolist(), d_score.tolist())]
    return gt, results


def _image_weights(rng: np.random.Generator, num_images: int) -> np.ndarray:
    """How likely each image is to hold a box: gamma-distributed (some crowded images), about 1% empty."""
    w = rng.gamma(3.0, 1.0, num_images)
    w[rng.random(num_images) < 0.01] = 0.0
    if not w.any():
        w[:] = 1.0
    return w / w.sum()
