#!/usr/bin/env python
"""Train an ImageNet classifier with the paper's recipe (He et al. 2015, Sec. 3.4).

    python tools/train_cls.py configs/imagenet_r50.yaml [key.sub=value ...] [--resume]
    torchrun --nproc_per_node=8 tools/train_cls.py configs/imagenet_r50.yaml

The data folder has the ImageNet layout ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``
(``data.root=...``, default ``$DETRES_DATA/imagenet``). The run directory (``output_dir=...``) receives
config.yaml, log.txt, metrics.jsonl, TensorBoard events, checkpoints, model_final.pth and eval.json
(top-1/top-5 error, centre crop and 10-crop). ``model_final.pth`` works as
``model.backbone.weights=...`` in every detection config.

    python tools/train_cls.py configs/imagenet_r50.yaml --time-step [--batch 2] [--steps 3]

prints the seconds of one training step (synthetic data) instead of training.

    python tools/train_cls.py configs/imagenet_r50.yaml --eval-only output/imagenet_r50/model_final.pth \
        test.multi_scale=[224,256,384,480,640]

evaluates a classifier without training and prints its errors: centre crop, 10-crop and, with
``test.multi_scale``, the fully-convolutional multi-scale test of Sec. 3.4 (scores averaged over the scales).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.benchmarks.train import time_cls_step  # noqa: E402
from detres.tasks.classification import run_eval, run_train  # noqa: E402
from detres.tasks.check_data import require_clean_data  # noqa: E402
from detres.tasks.common import check_output_dir, read_config  # noqa: E402
from detres.utils import comm  # noqa: E402
from detres.utils.cli import add_training_args, check_training_args, run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p)
    p.add_argument("--time-step", action="store_true", help="time one training step on synthetic data and exit")
    p.add_argument("--batch", type=int, default=2, help="batch size for --time-step")
    p.add_argument("--steps", type=int, default=3, help="timed steps for --time-step (after one warm-up step)")
    p.add_argument("--eval-only", default=None, metavar="WEIGHTS",
                   help="evaluate this classifier checkpoint with the config's test protocol and exit")
    return p


def run(args: argparse.Namespace) -> int:
    check_training_args(args)
    cfg = read_config(args.config, args.overrides, task="classification")
    if args.eval_only:
        print(json.dumps(run_eval(cfg, args.eval_only, device=args.device), indent=2, sort_keys=True))
        return 0
    check_output_dir(cfg, inputs=[args.config], overwrite=args.overwrite, resume=args.resume)
    if args.check_data:
        require_clean_data(cfg, source=args.config)
    if args.time_step:
        if args.steps < 1 or args.batch < 1:
            raise ValueError(f"--time-step: --steps and --batch must be >= 1, got {args.steps} and {args.batch}")
        result = time_cls_step(cfg, batch_size=args.batch, steps=args.steps, device=args.device or "cpu")
        print(json.dumps({"config": args.config, **result}))
        return 0
    try:
        result = run_train(cfg, resume=args.resume, overwrite=args.overwrite, new_solver=args.new_solver,
                           device=args.device, progress=not args.no_progress)
        main_process = comm.is_main_process()
    finally:
        comm.destroy_distributed()
    if result.get("eval") and main_process:
        print(json.dumps(result["eval"], indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv, intermixed=True)


if __name__ == "__main__":
    sys.exit(main())
