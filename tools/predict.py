#!/usr/bin/env python
"""Detect objects in images: ``python tools/predict.py CONFIG CHECKPOINT IMAGES... [--out DIR]``.

Writes ``DIR/<image stem>.png`` (boxes, class names and scores drawn on the original image) and
``DIR/predictions.json`` (boxes in original-image pixels, 0-based x1 y1 x2 y2).
Example: python tools/predict.py configs/demo_shapes.yaml output/demo_shapes/model_final.pth data/shapes/JPEGImages/000400.jpg
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.config import load_config  # noqa: E402
from detres.tasks.detection import run_predict  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the YAML config the checkpoint was trained with (or its output_dir/config.yaml)")
    p.add_argument("checkpoint", help="model_final.pth or another trainer checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions", help="output folder (default: ./predictions)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="drop detections below this score")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return p


def run(args: argparse.Namespace) -> int:
    for path in args.images:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: image not found")
    cfg = load_config(args.config, args.set)
    records = run_predict(cfg, args.checkpoint, args.images, args.out, score_thresh=args.score_thresh,
                          device=args.device)
    n = sum(len(r["detections"]) for r in records)
    print(f"{n} detections in {len(records)} images -> {args.out}/ (PNGs + predictions.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
