#!/usr/bin/env python
"""Detect objects in images with a trained detector.

    python tools/predict.py RUN_DIR IMAGES... [--out DIR]                 # a run folder: config.yaml + model_final.pth
    python tools/predict.py CONFIG IMAGES... --checkpoint model.pth [--out DIR]

IMAGES are files, folders (every image inside) or globs ("photos/*.jpg"). Writes DIR/<image stem>.png (boxes,
class names and scores drawn on the original image, enlarged when small) and DIR/predictions.json in the
COCO results format: [{"image_id": <image path>, "category_id": 1..K, "category": name,
"bbox": [x, y, w, h] (original pixels), "score"}].
Example: python tools/predict.py output/demo_shapes data/shapes/JPEGImages/000400.jpg
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.tasks.predict import expand_images, predict_files  # noqa: E402
from detres.tasks.predictor import Predictor  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run folder (config.yaml + model_final.pth) or a config file")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--checkpoint", default=None, help="weights (default: the run's model_final.pth)")
    p.add_argument("--out", default="predictions", help="output folder (default: ./predictions)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detections drawn and written from this score")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    return p


def run(args: argparse.Namespace) -> int:
    images = expand_images(args.images)
    predictor = Predictor(args.model, args.checkpoint, device=args.device)
    results = predict_files(predictor, images, args.out, score_thresh=args.score_thresh)
    print(f"{len(results)} detections in {len(images)} images -> {args.out}/ (PNGs + predictions.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
