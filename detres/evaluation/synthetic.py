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
    rng = np.random.default_rng(seed)  # one stream: the steps below draw from it in this order
    cat_ids = np.asarray(COCO_CATEGORY_IDS[:num_categories], np.int64)
    cat_w = _category_weights(num_categories)
    image_ids, widths, heights = _image_sizes(rng, num_images)
    gt_boxes = _ground_truth_boxes(rng, widths, heights, num_objects, cat_w, crowd_frac)
    images = [{"id": int(i), "file_name": f"{int(i):012d}.jpg", "width": int(w), "height": int(h)}
              for i, w, h in zip(image_ids, widths, heights)]
    annotations = [{"id": k + 1, "image_id": int(image_ids[i]), "category_id": int(cat_ids[c]), "bbox": b,
                    "area": round(b[2] * b[3], 4), "iscrowd": int(cr)}
                   for k, (i, b, c, cr) in enumerate(zip(*(a.tolist() for a in gt_boxes)))]
    gt = {"info": {"description": f"detres synthetic val2017-sized set (seed {seed})"}, "images": images,
          "annotations": annotations,
          "categories": [{"id": int(c), "name": f"category{int(c)}", "supercategory": "thing"} for c in cat_ids]}
    found = _found_detections(rng, *gt_boxes, cat_w, dets_per_image)
    n_rand = dets_per_image - np.bincount(found[0], minlength=num_images)
    rand = _random_detections(rng, widths, heights, n_rand, cat_w)

    d_img = np.r_[found[0], rand[0]]
    order = np.argsort(d_img, kind="stable")  # results grouped by image, as a detector writes them
    d_img = d_img[order]
    d_box = np.round(np.r_[found[1], rand[1]][order], 3)
    d_cat = cat_ids[np.r_[found[2], rand[2]][order]]
    d_score = np.round(np.r_[found[3], rand[3]][order], 5)
    results = [{"image_id": int(image_ids[i]), "category_id": c, "bbox": b, "score": s}
               for i, c, b, s in zip(d_img.tolist(), d_cat.tolist(), d_box.tolist(), d_score.tolist())]
    return gt, results


def _category_weights(num_categories: int) -> np.ndarray:
    """``[num_categories]`` probabilities of the categories: a power law, the first three times heavier."""
    cat_w = 1.0 / np.arange(1, num_categories + 1) ** 0.9
    cat_w[0] *= 3.0
    cat_w /= cat_w.sum()
    return cat_w


def _image_sizes(rng: np.random.Generator, num_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image ids sorted, widths, heights)``, each ``[num_images]``: 640 on the longer side, 3/4 landscape."""
    landscape = rng.random(num_images) < 0.75
    short = rng.integers(360, 641, num_images)
    widths = np.where(landscape, 640, short)
    heights = np.where(landscape, short, 640)
    image_ids = np.sort(rng.choice(np.arange(1, 600_000), num_images, replace=False))
    return image_ids, widths, heights


def _ground_truth_boxes(rng: np.random.Generator, widths: np.ndarray, heights: np.ndarray, num_objects: int,
                        cat_w: np.ndarray, crowd_frac: float) -> tuple[np.ndarray, ...]:
    """``(image index [M] sorted, boxes [M, 4] xywh px rounded to 2 decimals, category index [M], crowd [M])``
    for ``M = num_objects``, a few images left empty."""
    num_images = len(widths)
    g_img = np.sort(rng.choice(num_images, num_objects, p=_image_weights(rng, num_images)))
    side = np.exp(rng.normal(_LOG_SIDE_MEAN, _LOG_SIDE_STD, num_objects))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), num_objects))
    gw = np.minimum(side * np.sqrt(ratio), widths[g_img] - 1.0).clip(1.0)
    gh = np.minimum(side / np.sqrt(ratio), heights[g_img] - 1.0).clip(1.0)
    gx = rng.uniform(0, 1, num_objects) * (widths[g_img] - gw)
    gy = rng.uniform(0, 1, num_objects) * (heights[g_img] - gh)
    g_box = np.round(np.c_[gx, gy, gw, gh], 2)
    g_cat = rng.choice(len(cat_w), num_objects, p=cat_w)
    g_crowd = rng.random(num_objects) < crowd_frac
    return g_img, g_box, g_cat, g_crowd


def _found_detections(rng: np.random.Generator, g_img: np.ndarray, g_box: np.ndarray, g_cat: np.ndarray,
                      g_crowd: np.ndarray, cat_w: np.ndarray, dets_per_image: int) -> tuple[np.ndarray, ...]:
    """``(image index [F], boxes [F, 4] xywh, category index [F], scores [F])``: the non-crowd boxes found
    (probability 0.8, at most ``dets_per_image`` per image), jittered copies, 90% with their own category."""
    num_objects = len(g_img)
    found = np.flatnonzero(~g_crowd & (rng.random(num_objects) < 0.8))
    # at most dets_per_image found boxes per image (found is sorted by image: rank within its image)
    f_img = g_img[found]
    first = np.searchsorted(f_img, f_img)
    found = found[np.arange(len(found)) - first < dets_per_image]
    jitter = rng.normal(0, 0.1, (len(found), 4)) * np.c_[g_box[found, 2:], g_box[found, 2:]]
    f_box = g_box[found] + jitter
    f_box[:, 2:] = np.maximum(f_box[:, 2:], 1.0)
    f_cat = np.where(rng.random(len(found)) < 0.9, g_cat[found], rng.choice(len(cat_w), len(found), p=cat_w))
    f_score = rng.beta(4, 2, len(found))
    return g_img[found], f_box, f_cat, f_score


def _random_detections(rng: np.random.Generator, widths: np.ndarray, heights: np.ndarray, n_rand: np.ndarray,
                       cat_w: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(image index [R], boxes [R, 4] xywh inside the image, category index [R], scores [R])``: ``n_rand[i]``
    random boxes of random categories in image ``i``, scored lower on average than the found ones."""
    r_img = np.repeat(np.arange(len(widths)), n_rand)
    r_side = np.exp(rng.normal(_LOG_SIDE_MEAN, _LOG_SIDE_STD, len(r_img)))
    r_w = np.minimum(r_side, widths[r_img] - 1.0).clip(1.0)
    r_h = np.minimum(r_side * np.exp(rng.uniform(-1, 1, len(r_img))), heights[r_img] - 1.0).clip(1.0)
    r_box = np.c_[rng.uniform(0, 1, len(r_img)) * (widths[r_img] - r_w),
                  rng.uniform(0, 1, len(r_img)) * (heights[r_img] - r_h), r_w, r_h]
    r_cat = rng.choice(len(cat_w), len(r_img), p=cat_w)
    r_score = rng.beta(1.2, 6, len(r_img))
    return r_img, r_box, r_cat, r_score


def _image_weights(rng: np.random.Generator, num_images: int) -> np.ndarray:
    """How likely each image is to hold a box: gamma-distributed (some crowded images), about 1% empty."""
    w = rng.gamma(3.0, 1.0, num_images)
    w[rng.random(num_images) < 0.01] = 0.0
    if not w.any():
        w[:] = 1.0
    return w / w.sum()
