"""Full-size benchmarks: ``scale`` (data sets and evaluation at the real data sets' sizes) and ``paper-configs``
(every paper config for 2 iterations and a 2-image evaluation at its own image size and proposal counts).

Each measurement of memory runs in a fresh Python process (``python -m detres.benchmarks.child <job> ...``
prints one JSON line), so one measurement's allocations never count in another's; every detres figure is
printed beside its reference (pycocotools, or a DataLoader over an empty data set) measured in the same run.
PSS (proportional set size) counts pages shared between processes once in all.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from detres.benchmarks import register
from detres.benchmarks.synthetic import TRAIN2017, VAL2017, VOC0712, write_coco_instances, write_voc_tree
from detres.utils.cli import positive_int

__all__ = ["bench_scale", "bench_paper_configs", "PAPER_CONFIGS"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
#: The paper configs (ResNet paper Tables 7 and 8, both arms).
PAPER_CONFIGS = ("voc07_vgg16", "voc07_r50", "voc07_r101", "voc0712_vgg16", "voc0712_r101", "voc12_vgg16",
                 "voc12_r101", "coco_vgg16", "coco_r50", "coco_r101")
GB = 1e9


def _pss() -> float:
    import psutil

    return psutil.Process().memory_full_info().pss / GB


def _tree_pss() -> float:
    """PSS of this process and all its children (DataLoader workers), GB."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / GB


def _child(job: str, *args: str) -> dict:
    """Run ``job`` in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "detres.benchmarks.child", job, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(CONFIG_DIR.parent))
    if out.returncode != 0:
        raise RuntimeError(f"benchmark job {job} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------
# jobs run in a child process
# ------------------------------------------------------------------------------------------------------
class _Targets:
    """A data set whose items are a target's box count (the workers touch every target, decode nothing)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> int:
        if hasattr(self.dataset, "get_target"):
            return len(self.dataset.get_target(i)["boxes"])
        return len(self.dataset.get_annotation(i).boxes)  # VOC: the parsed file


class _Nothing:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return 0


def _worker_pass(dataset, workers: int) -> dict:
    """Total PSS (this process + ``workers`` DataLoader workers, started as detres's loaders start them) once
    the workers run, and after they have read every item; the same for an empty data set of the same length."""
    import torch
    from torch.utils.data import DataLoader

    from detres.data.loader import worker_context

    def one(ds) -> tuple[float, float, int]:
        loader = DataLoader(ds, batch_size=512, num_workers=workers, multiprocessing_context=worker_context(workers),
                            collate_fn=sum)
        it = iter(loader)
        n_batches = len(loader)
        total = next(it)
        started = _tree_pss()
        for k in range(1, n_batches - 1):
            total += next(it)
        end = _tree_pss()  # before the last batch: the workers still live
        total += sum(it)
        del it
        return started, end, int(total)

    import warnings

    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 workers on 2 cores, on purpose
    torch.set_num_threads(1)
    empty_start, empty_end, _ = one(_Nothing(len(dataset)))
    start, end, boxes = one(_Targets(dataset))
    return {"boxes_read": boxes, "workers": workers, "empty_dataset_total_pss_gb": empty_end,
            "total_pss_gb_workers_started": start, "total_pss_gb_after_pass": end,
            "pass_adds_gb": end - start, "dataset_in_workers_adds_gb": end - empty_end}


def job_coco_reference(ann_file: str) -> dict:
    """pycocotools' own load of the file: time and PSS."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    before = _pss()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    dt = time.perf_counter() - t0
    return {"pycocotools_load_s": dt, "pss_gb_before": before, "pss_gb_after": _pss(), "images": len(coco.imgs)}


def job_coco_build(image_dir: str, ann_file: str, workers: str) -> dict:
    import torch  # noqa: F401  (imported before the baseline, as every training process has it)

    from detres.data.coco import COCODetection

    before = _pss()
    t0 = time.perf_counter()
    ds = COCODetection(image_dir, ann_file, train=True)
    dt = time.perf_counter() - t0
    out = {"build_s": dt, "pss_gb_before": before, "pss_gb_after": _pss(), "images": len(ds),
           "pickled_mb": len(pickle.dumps(ds)) / 1e6}
    out.update(_worker_pass(ds, int(workers)))
    return out


def job_voc_build(root: str, workers: str) -> dict:
    import torch  # noqa: F401

    from detres.data.voc import build_voc

    names = tuple(f"{year}_trainval" for year in VOC0712)
    before = _pss()
    t0 = time.perf_counter()
    ds = build_voc(root, names)
    dt = time.perf_counter() - t0
    out = {"build_s": dt, "xml_files": len(ds), "pss_gb_before": before, "pss_gb_after": _pss(),
           "pickled_mb": len(pickle.dumps(ds)) / 1e6}
    out.update(_worker_pass(ds, int(workers)))
    return out


JOBS = {"coco-reference": job_coco_reference, "coco-build": job_coco_build, "voc-build": job_voc_build}


# ------------------------------------------------------------------------------------------------------
# scale
# ------------------------------------------------------------------------------------------------------
def _coco_eval_figures(tmp: Path, repeats: int) -> dict:
    """A val2017-sized result through ``evaluate_coco_results`` and through plain pycocotools, same inputs."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detres.evaluation.coco import COCO_STAT_NAMES, evaluate_coco_results
    from detres.evaluation.synthetic import synthetic_coco_eval_inputs

    gt, results = synthetic_coco_eval_inputs(seed=0)
    gt_file = tmp / "val_gt.json"
    gt_file.write_text(json.dumps(gt))
    ours, ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = evaluate_coco_results(str(gt_file), results)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(gt_file))
            ev = COCOeval(coco, coco.loadRes(list(results)), iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ref.append(time.perf_counter() - t0)
    diff = max(abs((m[k] if m[k] is not None else -1.0) - float(v)) for k, v in zip(COCO_STAT_NAMES, ev.stats))
    return {"images": len(gt["images"]), "gt_boxes": len(gt["annotations"]), "detections": len(results),
            "AP": m["AP"], "detres_s": float(np.median(ours)), "pycocotools_s": float(np.median(ref)),
            "speedup": float(np.median(ref) / np.median(ours)), "max_abs_stat_diff": diff,
            "times_detres": ours, "times_pycocotools": ref}


def _voc_eval_figures(repeats: int) -> dict:
    from detres.benchmarks.data_eval import synthetic_voc_eval_inputs
    from detres.evaluation.voc import evaluate_voc, read_voc_results, write_voc_results

    gt, dets, names = synthetic_voc_eval_inputs()
    times = []
    with tempfile.TemporaryDirectory() as d:
        write_voc_results(dets, d, class_names=names)
        for _ in range(repeats):
            t0 = time.perf_counter()
            m = evaluate_voc(read_voc_results(d, names, valid_ids=set(gt)), gt, names)
            times.append(time.perf_counter() - t0)
    return {"images": len(gt), "detections": int(sum(len(v.scores) for v in dets.values())),
            "read_files_and_eval_s": float(np.median(times)), "mAP_area": m["mAP_area"]}


def _scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", nargs="+", default=["coco", "voc", "eval"], choices=["coco", "voc", "eval"])
    p.add_argument("--dir", default=None, help="keep the synthetic files here (reused when present)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=positive_int, default=3, help="evaluation timings (median)")


@register("scale", "data sets and evaluation at full size (train2017, VOC07+12, val2017) beside pycocotools", _scale_args)
def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    tmp_ctx = tempfile.TemporaryDirectory() if args.dir is None else None
    tmp = Path(args.dir or tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    try:
        if "coco" in args.parts:
            ann, images = tmp / "annotations" / "instances_train2017.json", tmp / "train2017"
            t0 = time.perf_counter()
            if not ann.is_file():
                write_coco_instances(ann, *TRAIN2017, image_dir=images)
            out["coco_train2017"] = {"json_mb": ann.stat().st_size / 1e6, "write_s": time.perf_counter() - t0,
                                     "pycocotools": _child("coco-reference", str(ann)),
                                     "detres": _child("coco-build", str(images), str(ann), str(args.workers))}
        if "voc" in args.parts:
            root = tmp / "voc"
            if not (root / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").is_file():
                write_voc_tree(root)
            out["voc0712_trainval"] = _child("voc-build", str(root), str(args.workers))
        if "eval" in args.parts:
            out["coco_eval_val2017"] = _coco_eval_figures(tmp, args.repeats)
            out["voc_eval_voc07_test"] = _voc_eval_figures(args.repeats)
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return out


# ------------------------------------------------------------------------------------------------------
# paper-configs
# ------------------------------------------------------------------------------------------------------
def _write_jpegs(folder: Path, names_sizes: list[tuple[str, int, int]], seed: int) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, w, h in names_sizes:
        img = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
        cv2.imwrite(str(folder / name), img)


def write_paper_data(root: Path, per_split: int = 2) -> Path:
    """Real-size JPEGs under ``root`` in the layouts the paper configs name: ``VOC2007/{trainval,test}``,
    ``VOC2012/{trainval,test}`` (500 px VOC sizes) and ``coco/{train2014,val2014}`` with instances files
    (640x480, COCO's 80 category ids), ``per_split`` images each. Returns ``root``."""
    for year in ("2007", "2012"):
        write_voc_tree(root, {year: 2 * per_split}, seed=int(year))
        base = root / f"VOC{year}"
        ids = (base / "ImageSets" / "Main" / "trainval.txt").read_text().split()
        (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids[:per_split]) + "\n")
        (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[per_split:]) + "\n")
        sizes = []
        for i in ids:
            xml = (base / "Annotations" / f"{i}.xml").read_text()
            w = int(xml.split("<width>")[1].split("<")[0])
            h = int(xml.split("<height>")[1].split("<")[0])
            sizes.append((f"{i}.jpg", w, h))
        _write_jpegs(base / "JPEGImages", sizes, seed=int(year))
    for k, split in enumerate(("train2014", "val2014")):
        ann = write_coco_instances(root / "coco" / "annotations" / f"instances_{split}.json", per_split,
                                   8 * per_split, seed=k)
        data = json.loads(ann.read_text())
        _write_jpegs(root / "coco" / split, [(im["file_name"], im["width"], im["height"]) for im in data["images"]],
                     seed=k)
    return root


def job_paper_config(name: str, data_root: str, out_dir: str) -> dict:
    """Train ``configs/<name>.yaml`` for 2 iterations and evaluate it on 2 images, as ``tools/train_det.py``
    does, with random weights and trainable BN; count proposals and RoIs with forward hooks."""
    import torch
    from torch.nn.modules.module import register_module_forward_hook

    from detres.modeling.detector import C4RoIPooler
    from detres.tasks.common import read_config
    from detres.tasks.detection import run_train
    from detres.tasks.timing import config_summary
    from detres.modeling.tv_private import RegionProposalNetwork, RoIHeads

    counts: dict[str, list[int]] = {"train_proposals": [], "train_rois": [], "test_proposals": [], "test_rois": []}

    def hook(module, inputs, output):  # per image: proposals out of the RPN, RoIs into the box head
        phase = "train" if module.training else "test"
        if isinstance(module, RegionProposalNetwork):
            counts[f"{phase}_proposals"].extend(len(b) for b in output[0])
        elif isinstance(module, C4RoIPooler) and module.training:  # the sampled RoIs (128 per image)
            counts["train_rois"].extend(len(b) for b in inputs[1])
        elif isinstance(module, RoIHeads) and not module.training:  # every proposal is scored at test time
            counts["test_rois"].extend(len(b) for b in inputs[1])

    handle = register_module_forward_hook(hook)
    cfg = read_config(CONFIG_DIR / f"{name}.yaml", [
        f"data.root={data_root}", "model.backbone.weights=null", "model.backbone.norm=bn", "solver.max_iter=2",
        "solver.steps=[]", "solver.warmup_iters=0", "solver.log_period=1", "solver.checkpoint_period=100",
        "test.num_vis_images=0", f"output_dir={out_dir}"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = run_train(cfg, progress=False)
    wall = time.perf_counter() - t0
    handle.remove()
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8")]
    steps = [r["time"] for r in rows if "time" in r]
    evals = [r["eval/time_s"] for r in rows if "eval/time_s" in r]
    return {"config": name, **config_summary(cfg), "s_per_iter": steps, "eval_s_2_images": evals[-1] if evals else None,
            "wall_s": wall, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
            "proposals_per_image_train": sorted(set(counts["train_proposals"])),
            "rois_per_image_train": sorted(set(counts["train_rois"])),
            "proposals_per_image_test": sorted(set(counts["test_proposals"])),
            "rois_per_image_test": sorted(set(counts["test_rois"])),
            "losses_finite": all(np.isfinite(v) for v in result.get("losses", {}).values()),
            "eval": {k: v for k, v in (result.get("eval") or {}).items() if not isinstance(v, dict)}}


JOBS["paper-config"] = job_paper_config


def _paper_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS), choices=PAPER_CONFIGS)
    p.add_argument("--dir", default=None, help="keep the generated images and runs here")


@register("paper-configs", "every paper config: 2 iterations + a 2-image evaluation at its own sizes (minutes)",
          _paper_args)
def bench_paper_configs(args: argparse.Namespace) -> dict[str, Any]:
    tmp_ctx = tempfile.TemporaryDirectory() if args.dir is None else None
    tmp = Path(args.dir or tmp_ctx.name)
    try:
        data = write_paper_data(tmp / "data")
        out: dict[str, Any] = {}
        for name in args.configs:  # one config failing is reported in its row; the others still run
            try:
                out[name] = _child("paper-config", name, str(data), str(tmp / "runs" / name))
            except RuntimeError as exc:
                out[name] = {"error": str(exc)[-2000:]}
            print(f"{name}: {'failed' if 'error' in out[name] else 'done'}", file=sys.stderr, flush=True)
        return out
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()

