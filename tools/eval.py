#!/usr/bin/env python
"""Evaluate detections on PASCAL VOC or COCO, or compare finished runs with the paper.

Run a model:        python tools/eval.py --config configs/voc07_r101.yaml --checkpoint output/voc07_r101/model_final.pth
Existing results:   python tools/eval.py --dataset voc07 --results RESULTS_DIR        (comp4_det_test_<class>.txt files)
                    python tools/eval.py --dataset coco --results dets.json [--ann-file instances_val2017.json]
Compare runs:       python tools/eval.py --compare output/voc07_vgg16 output/voc07_r101 [--markdown table.md]

--data-root defaults to $DETRES_DATA, else ./data (VOC: <root>/VOC2007 or <root>/VOCdevkit/VOC2007;
COCO: <root>/coco/{val2017,annotations/instances_val2017.json}). --json-out writes the metrics as
fractions in [0, 1]. Bad input ends with a one-line "error: ..." naming the file (and line) and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VOC_DEFAULT_SPLIT = {"voc07": ("2007", "test"), "voc12": ("2012", "val")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", help="detector config (YAML); needs --checkpoint")
    mode.add_argument("--results", help="VOC: folder of comp4_det_test_<class>.txt files; COCO: results JSON")
    mode.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="run folders with eval.json and config.yaml")
    p.add_argument("--checkpoint", help="detres checkpoint (model_final.pth), read with weights_only=True")
    p.add_argument("--dataset", choices=("voc07", "voc12", "coco"), default=None, help="benchmark of --results")
    p.add_argument("--data-root", default=None, help="data folder (default: $DETRES_DATA, else ./data)")
    p.add_argument("--split", default=None, help="VOC image set (voc07: test, voc12: val) or COCO split (val2017); "
                   "with --config, the config's data.test by default")
    p.add_argument("--ann-file", default=None, help="COCO ground truth (default <root>/coco/annotations/instances_<split>.json)")
    p.add_argument("--json-out", default=None, help="write the metrics here (JSON, fractions in [0, 1])")
    p.add_argument("--markdown", default=None, help="with --compare: also write the table as Markdown")
    p.add_argument("--output-dir", default=None, help="with --config: write the results files here")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: the config's)")
    p.add_argument("opts", nargs="*", help="with --config: overrides key.sub=value")
    args = p.parse_args(argv)
    if args.config and not args.checkpoint:
        p.error("--config needs --checkpoint")
    if args.results and not args.dataset:
        p.error("--results needs --dataset voc07|voc12|coco")
    if args.markdown and not args.compare:
        p.error("--markdown goes with --compare")
    return args


def data_root(args: argparse.Namespace) -> Path:
    return Path(args.data_root or os.environ.get("DETRES_DATA") or "data")


def eval_results(args: argparse.Namespace) -> tuple[dict, str]:
    if args.dataset == "coco":
        from detres.data.coco import load_coco
        from detres.evaluation.coco import evaluate_coco_results, format_coco_table, load_coco_results

        split = args.split or "val2017"
        ann = Path(args.ann_file) if args.ann_file else data_root(args) / "coco" / "annotations" / f"instances_{split}.json"
        coco_gt = load_coco(ann)
        metrics = evaluate_coco_results(coco_gt, load_coco_results(args.results, coco_gt))
        return metrics, format_coco_table(metrics)
    from detres.data.voc import VOCDetection, find_voc_dir
    from detres.evaluation.voc import evaluate_voc_results_dir, format_voc_table

    year, default_split = VOC_DEFAULT_SPLIT[args.dataset]
    dataset = VOCDetection(find_voc_dir(data_root(args), year), split=args.split or default_split, keep_difficult=True)
    metrics = evaluate_voc_results_dir(args.results, dataset)
    return metrics, format_voc_table(metrics)


def eval_model(args: argparse.Namespace) -> tuple[dict, str]:
    import torch

    from detres.config import load_config
    from detres.data.loader import build_test_loader
    from detres.engine.builders import build_evaluator, build_test_dataset, load_model_from_checkpoint
    from detres.evaluation.coco import format_coco_table
    from detres.evaluation.inference import inference_on_dataset
    from detres.evaluation.voc import format_voc_table

    if not Path(args.config).is_file():
        raise ValueError(f"{args.config}: config file not found")
    if not Path(args.checkpoint).is_file():
        raise ValueError(f"{args.checkpoint}: checkpoint not found")
    cfg = load_config(args.config, args.opts)
    if args.data_root:
        cfg.data.root = args.data_root
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model_from_checkpoint(cfg, args.checkpoint, device=device)
    dataset = build_test_dataset(cfg, args.split)
    evaluator = build_evaluator(cfg, dataset, output_dir=args.output_dir)
    workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
    loader = build_test_loader(dataset, batch_size=cfg.test.ims_per_batch, num_workers=workers)
    metrics = inference_on_dataset(model, loader, evaluator, device=device, amp=cfg.solver.amp)
    table = format_coco_table(metrics) if "AP50" in metrics else format_voc_table(metrics)
    return metrics, table


def compare(args: argparse.Namespace) -> tuple[None, str]:
    from detres.evaluation.compare import format_compare_markdown, format_compare_text, load_run

    runs = [load_run(d) for d in args.compare]
    if args.markdown:
        Path(args.markdown).write_text(format_compare_markdown(runs))
    return None, format_compare_text(runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.results and not Path(args.results).exists():
            raise ValueError(f"{args.results}: results path not found")
        metrics, table = compare(args) if args.compare else eval_results(args) if args.results else eval_model(args)
        print(table)
        if args.json_out and metrics is not None:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(metrics, indent=2) + "\n")
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
