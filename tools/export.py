#!/usr/bin/env python
"""Export a trained detector to TorchScript or ONNX.

    python tools/export.py CONFIG CHECKPOINT --format torchscript|onnx --out FILE

The exported model takes one image as a float32 tensor [3, H, W], RGB in [0, 1], already resized to the
config's sizes (shorter side data.min_size, longer at most data.max_size), and returns (boxes [N, 4] xyxy in
the input's pixels, labels [N] int64 1..K, scores [N]). The file carries the class names, the category ids,
the resize rule and the normalisation (ONNX metadata_props; TorchScript extra file detres.json). An existing
--out is refused unless --overwrite (a checkpoint always). What exports and what does not: README "Export".
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.config import load_config  # noqa: E402
from detres.engine.checkpoint import load_checkpoint  # noqa: E402
from detres.modeling.export import FORMATS, export_detector, export_metadata  # noqa: E402
from detres.tasks.detection import class_names_for, load_model_from_checkpoint  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the YAML config the checkpoint was trained with (or its output_dir/config.yaml)")
    p.add_argument("checkpoint", help="model_final.pth or another trainer checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the file to write (.pt / .onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (never a checkpoint)")
    return p


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.out) and os.path.exists(args.checkpoint) and os.path.samefile(args.out, args.checkpoint):
        raise ValueError(f"--out {args.out}: is the checkpoint itself; export to another file")
    cfg = load_config(args.config)
    model = load_model_from_checkpoint(cfg, args.checkpoint)
    state = load_checkpoint(args.checkpoint)
    min_size = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    meta = export_metadata(model, class_names=state.get("class_names") or class_names_for(cfg),
                           label_to_cat_id=state.get("label_to_cat_id"), min_size=min_size,
                           max_size=cfg.data.max_size)
    size = (min_size, min(cfg.data.max_size, round(min_size * 4 / 3)))
    path = export_detector(model, args.out, fmt=args.format, example_size=size, opset=args.opset, metadata=meta,
                           overwrite=args.overwrite)
    print(f"{args.checkpoint} -> {path} ({args.format}): image [3, H, W] RGB in [0, 1] -> (boxes, labels, scores)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
