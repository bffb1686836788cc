"""Benchmarks of the data and evaluation part: ``voc-eval`` and ``data``."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np

from detres.benchmarks import register
from detres.utils.cli import positive_int

__all__ = ["synthetic_voc_eval_inputs", "bench_voc_eval", "bench_data"]


def synthetic_voc_eval_inputs(*, num_images: int = 4952, num_objects: int = 12032, num_detections: int = 120000,
                              num_classes: int = 20, difficult_frac: float = 0.12, seed: int = 0):
    """VOC07-test-sized ground truth and detections (image ids as zero-padded strings).

    Returns ``(ground_truth: id -> GroundTruth, detections: class -> ClassDetections, class_names)``;
    about 70% of the detections are noisy copies of ground-truth boxes, the rest random boxes.
    """
    from detres.evaluation.voc import ClassDetections, GroundTruth

    rng = np.random.default_rng(seed)
    names = [f"class{k:02d}" for k in range(num_classes)]
    ids = [f"{i:06d}" for i in range(num_images)]
    g_img = np.sort(rng.integers(0, num_images, num_objects))
    xy = rng.uniform(0, 400, (num_objects, 2))
    wh = rng.uniform(10, 200, (num_objects, 2))
    g_box = np.c_[xy, xy + wh]
    g_lab = rng.integers(1, num_classes + 1, num_objects)
    g_diff = rng.random(num_objects) < difficult_frac
    gt = {}
    starts = np.searchsorted(g_img, np.arange(num_images + 1))
    for i, image_id in enumerate(ids):
        s, e = starts[i], starts[i + 1]
        gt[image_id] = GroundTruth(g_box[s:e], g_lab[s:e], g_diff[s:e])
    n_true = int(0.7 * num_detections)
    src = rng.integers(0, num_objects, n_true)
    d_img = np.r_[g_img[src], rng.integers(0, num_images, num_detections - n_true)]
    d_lab = np.r_[g_lab[src], rng.integers(1, num_classes + 1, num_detections - n_true)]
    rxy = rng.uniform(0, 400, (num_detections - n_true, 2))
    d_box = np.r_[g_box[src] + rng.normal(0, 8, (n_true, 4)), np.c_[rxy, rxy + rng.uniform(10, 200, rxy.shape)]]
    d_sc = rng.random(num_detections)
    id_arr = np.asarray(ids, dtype=object)
    dets = {}
    for k, name in enumerate(names, start=1):
        sel = d_lab == k
        dets[name] = ClassDetections(list(id_arr[d_img[sel]]), d_sc[sel], d_box[sel] + np.array([1.0, 1.0, 0.0, 0.0]))
    return gt, dets, names


def _voc_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=positive_int, default=4952)
    p.add_argument("--objects", type=positive_int, default=12032)
    p.add_argument("--detections", type=positive_int, default=120000)
    p.add_argument("--repeats", type=positive_int, default=3)


@register("voc-eval", "VOC07-test-sized evaluation: in memory and through the results files", _voc_eval_args)
def bench_voc_eval(args: argparse.Namespace) -> dict[str, Any]:
    from detres.evaluation.voc import evaluate_voc, read_voc_results, write_voc_results

    gt, dets, names = synthetic_voc_eval_inputs(num_images=args.images, num_objects=args.objects,
                                                num_detections=args.detections)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        m = evaluate_voc(dets, gt, names)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_voc_results(dets, tmp, class_names=names)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = read_voc_results(tmp, names, valid_ids=set(gt))
        m2 = evaluate_voc(back, gt, names)
        t_read_eval = time.perf_counter() - t0
    return {"images": args.images, "objects": args.objects, "difficult": int(sum(g.difficult.sum() for g in gt.values())),
            "detections": sum(len(d.scores) for d in dets.values()), "eval_s_min": min(times),
            "eval_s_median": float(np.median(times)), "write_results_s": t_write, "read_and_eval_s": t_read_eval,
            "mAP_area": m["mAP_area"], "files_match_memory": m2 == m}


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="a VOC tree (default: synthetic 500x375 JPEGs in a temp dir)")
    p.add_argument("--split", default="trainval")
    p.add_argument("--images", type=positive_int, default=200, help="images to read per measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--min-size", type=int, default=600)
    p.add_argument("--max-size", type=int, default=1000)


@register("data", "data pipeline throughput: JPEG decode + resize/flip to tensor, per worker count", _data_args)
def bench_data(args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    from detres.data.loader import build_train_loader
    from detres.data.shapes import SHAPES_CLASSES, generate_shapes_voc
    from detres.data.transforms import build_transforms
    from detres.data.voc import VOC_CLASSES, VOCDetection

    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            root, classes = args.data_dir, VOC_CLASSES
        else:  # VOC-sized images (375 x 500) so the cost is that of a real VOC image
            root = generate_shapes_voc(os.path.join(tmp, "shapes"), num_train=min(args.images, 200), num_test=0,
                                       image_size=(375, 500), seed=0)
            classes = SHAPES_CLASSES
        tf = build_transforms(train=True, min_size=args.min_size, max_size=args.max_size)
        ds = VOCDetection(root, split=args.split if args.data_dir else "train", class_names=classes, transforms=tf)
        out: dict[str, Any] = {"dataset": str(root) if args.data_dir else "synthetic 375x500 JPEG",
                               "min_size": args.min_size, "max_size": args.max_size}
        for w in args.workers:
            batch = 2
            n_batches = max(1, args.images // batch)
            it = build_train_loader(ds, images_per_batch=batch, num_workers=w, seed=0)
            next(it)  # start-up (worker spawn) is not timed
            t0 = time.perf_counter()
            for _ in itertools.islice(it, n_batches):
                pass
            dt = time.perf_counter() - t0
            rate = n_batches * batch / dt
            out[f"workers={w}"] = {"images_per_s": rate, "images_per_s_per_worker": rate / max(w, 1)}
            del it
    return out
