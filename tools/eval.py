#!/usr/bin/env python
"""Evaluate detections on PASCAL VOC or COCO, or compare finished runs with the paper.

Run a model:        python tools/eval.py --config configs/voc07_r101.yaml --checkpoint output/voc07_r101/model_final.pth
Existing results:   python tools/eval.py --dataset voc07 --results RESULTS_DIR        (comp4_det_test_<class>.txt files)
                    python tools/eval.py --dataset coco --results dets.json [--ann-file instances_val2017.json]
Compare runs:       python tools/eval.py --compare output/voc07_vgg16 output/voc07_r101 [--markdown table.md]
The paper's runs:   python tools/eval.py --dataset voc07 | voc0712 | voc12 | coco  [--output-root output]
                    (every <output-root>/voc07_* run's model_final.pth evaluated, unless its eval.json records the
                    checkpoint's SHA-256; then the paper's Table 7/8 with the VGG-16 -> ResNet gain)

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.evaluation.compare import format_compare_markdown, format_compare_text, load_run  # noqa: E402
from detres.tasks.common import read_config  # noqa: E402
from detres.tasks.detection import BENCHMARK_SPLITS, format_metrics, run_eval, run_eval_results  # noqa: E402
from detres.tasks.paper_runs import PAPER_RUNS, run_paper_runs  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402
from detres.utils.comm import is_main_process  # noqa: E402
from detres.utils.io import atomic_write_text  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()  # none of them: --dataset alone, the paper's runs under --output-root
    mode.add_argument("--config", help="detector config (YAML); needs --checkpoint")
    mode.add_argument("--results", help="VOC: folder of comp4_det_test_<class>.txt files; COCO: results JSON")
    mode.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="run folders with eval.json and config.yaml")
    p.add_argument("--checkpoint", help="detres checkpoint (model_final.pth), read with weights_only=True")
    p.add_argument("--dataset", choices=tuple(dict.fromkeys([*BENCHMARK_SPLITS, *PAPER_RUNS])), default=None,
                   help="benchmark of --results; alone: evaluate and compare the paper's runs of this data set")
    p.add_argument("--output-root", default="output", help="with --dataset alone: where the run folders are")
    p.add_argument("--data-root", default=None, help="data folder (default: $DETRES_DATA, else ./data)")
    p.add_argument("--split", default=None, help="VOC image set (voc07: test, voc12: val) or COCO split (val2017); "
                   "with --config, the config's data.test by default")
    p.add_argument("--ann-file", default=None, help="COCO ground truth (default <root>/coco/annotations/instances_<split>.json)")
    p.add_argument("--json-out", default=None, help="write the metrics here (JSON, fractions in [0, 1])")
    p.add_argument("--markdown", default=None, help="with --compare or --dataset alone: also write the table as Markdown")
    p.add_argument("--output-dir", default=None, help="with --config: write the results files here")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: the config's)")
    p.add_argument("opts", nargs="*", help="with --config: overrides key.sub=value")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the table (or the server files' place); write --json-out / --markdown."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.config and not args.checkpoint:
        raise ValueError("--config: needs --checkpoint")
    if not (args.config or args.results or args.compare or args.dataset):
        raise ValueError("give --config, --results, --compare, or --dataset alone (the paper's runs)")
    if args.results and args.dataset not in BENCHMARK_SPLITS:
        raise ValueError("--results: needs --dataset " + "|".join(BENCHMARK_SPLITS))
    if args.markdown and (args.config or args.results):
        raise ValueError("--markdown: goes with --compare or --dataset alone")
    if args.json_out and not (args.config or args.results or args.compare):
        raise ValueError("--json-out: goes with --config or --results (--dataset alone keeps each run's eval.json)")
    text = _text(args)
    if is_main_process():  # under torchrun every rank has the metrics; one table is printed
        print(text)
    return 0


def _text(args: argparse.Namespace) -> str:
    if not (args.config or args.results or args.compare):
        return run_paper_runs(args.dataset, output_root=args.output_root, device=args.device, data_root=args.data_root,
                              num_workers=args.num_workers, markdown=args.markdown)
    if args.compare:
        runs = [load_run(d) for d in args.compare]
        if args.markdown:
            atomic_write_text(args.markdown, format_compare_markdown(runs))
        return format_compare_text(runs)
    if args.results:
        metrics = run_eval_results(args.dataset, args.results, root=args.data_root, split=args.split,
                                   ann_file=args.ann_file)
    else:
        metrics = run_eval(read_config(args.config, args.opts, allow_empty=True), args.checkpoint, split=args.split,
                           device=args.device, output_dir=args.output_dir, num_workers=args.num_workers,
                           data_root=args.data_root)
    if args.json_out and is_main_process():
        atomic_write_text(args.json_out, json.dumps(metrics, indent=2) + "\n")
    return format_metrics(metrics)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv, intermixed=True)


if __name__ == "__main__":
    sys.exit(main())
