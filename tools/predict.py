#!/usr/bin/env python
"""Detect objects in images with a trained detector.

    python tools/predict.py RUN_DIR IMAGES... [--out DIR]                 # a run folder: config.yaml + model_final.pth
    python tools/predict.py CONFIG IMAGES... --checkpoint model.pth [--out DIR]
    python tools/predict.py RUN_DIR val_images/ --ann-file val.json       # image ids of a COCO file: tools/eval.py reads it

IMAGES are files, folders (every image inside, at any depth) or globs ("photos/**/*.jpg"). Writes
DIR/<path relative to the images' common folder>.png (detections scoring >= --vis-thresh drawn on the original
image, enlarged when small) and DIR/predictions.json in the COCO results format with every detection of the
model (its test threshold): [{"image_id", "category_id", "category": name, "bbox": [x, y, w, h] (original
pixels), "score"}]. category_id: the data's own ids for a COCO-JSON run, else 1..K in class order. image_id:
the id in --ann-file (or the run's COCO test set), else the image's path. An unreadable image is named and
skipped (exit code 1 at the end). Files in DIR are replaced only if predict wrote them (or --overwrite).
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
    p.add_argument("--vis-thresh", type=float, default=None,
                   help="pictures draw detections from this score (default: the config's test.vis_thresh); "
                        "predictions.json keeps them all")
    p.add_argument("--ann-file", default=None, help="COCO annotation file the images belong to: its image ids "
                   "(and category ids) are written")
    p.add_argument("--image-root", default=None, help="with --ann-file: its image folder (default: the file's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace files in --out that predict did not write")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    return p


def run(args: argparse.Namespace) -> int:
    if args.image_root and not args.ann_file:
        raise ValueError("--image-root: goes with --ann-file")
    images = expand_images(args.images)
    predictor = Predictor(args.model, args.checkpoint, device=args.device)
    s = predict_files(predictor, images, args.out, vis_thresh=args.vis_thresh, ann_file=args.ann_file,
                      image_root=args.image_root, overwrite=args.overwrite)
    print(f"{len(s.results)} detections (score >= {predictor.score_thresh:g}) in {len(s.pictures)} images -> "
          f"{args.out}/ ({len(s.pictures)} PNGs + predictions.json; image_id: {s.image_ids}, category_id: "
          f"{s.category_ids})")
    if s.skipped:
        names = ", ".join(list(s.skipped)[:3]) + (", ..." if len(s.skipped) > 3 else "")
        print(f"error: {len(s.skipped)} of {len(images)} images could not be read and were skipped: {names}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
