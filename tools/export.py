#!/usr/bin/env python
"""Export a trained detector to TorchScript or ONNX.

    python tools/export.py CONFIG CHECKPOINT --format torchscript|onnx --out FILE

The exported model takes one image as a float32 tensor [3, H, W], RGB in [0, 1], already resized to the
config's sizes (shorter side data.min_size, longer at most data.max_size), and orig_size (int64 [2], the
photo's [H0, W0]), and returns (boxes [N, 4] xyxy in the photo's pixels, labels [N] int64 1..K, scores [N]). The file carries the class names, the category ids,
the resize rule and the normalisation (ONNX metadata_props; TorchScript extra file detres.json). An existing
--out is refused unless --overwrite (a checkpoint always). What exports and what does not: README "Export".
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.modeling.export import FORMATS  # noqa: E402
from detres.tasks.common import read_config  # noqa: E402
from detres.tasks.detection import run_export  # noqa: E402
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
    path = run_export(read_config(args.config, allow_empty=True), args.checkpoint, args.out,
                      fmt=args.format, opset=args.opset, overwrite=args.overwrite)
    print(f"{args.checkpoint} -> {path} ({args.format}): image [3, H, W] RGB in [0, 1], orig_size [2] -> "
          "(boxes in the photo's pixels, labels, scores)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
