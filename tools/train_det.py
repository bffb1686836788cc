#!/usr/bin/env python
"""Train a C4 Faster R-CNN: ``python tools/train_det.py CONFIG [key.sub=value ...] [--resume]``.

Single process:   python tools/train_det.py configs/voc07_r101.yaml
One node, 8 GPUs: torchrun --nproc_per_node=8 tools/train_det.py configs/coco_r101.yaml
Resume:           python tools/train_det.py configs/voc07_r101.yaml --resume

Writes config.yaml, metrics.jsonl, TensorBoard events, checkpoints (model_NNNNNNN.pth, model_final.pth),
eval.json and vis/*.png to the config's output_dir. A folder that already holds a run's checkpoints is
refused unless --resume (continue it) or --overwrite (replace it) is given.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.tasks.detection import run_train  # noqa: E402
from detres.tasks.check_data import require_clean_data  # noqa: E402
from detres.tasks.common import check_output_dir, read_config  # noqa: E402
from detres.utils import comm  # noqa: E402
from detres.utils.cli import add_training_args, check_training_args, run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    check_training_args(args)
    cfg = read_config(args.config, args.overrides, task="detection")
    check_output_dir(cfg, inputs=[args.config], overwrite=args.overwrite, resume=args.resume)
    if args.check_data:
        require_clean_data(cfg, source=args.config)
    try:
        result = run_train(cfg, resume=args.resume, overwrite=args.overwrite, new_solver=args.new_solver,
                           device=args.device, progress=not args.no_progress)
    finally:
        comm.destroy_distributed()
    ev = result.get("eval") or {}
    if ev:
        print({k: v for k, v in ev.items() if isinstance(v, (int, float, str))})
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv, intermixed=True)


if __name__ == "__main__":
    sys.exit(main())
