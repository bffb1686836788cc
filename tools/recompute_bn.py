#!/usr/bin/env python
"""Recompute the BatchNorm statistics of a classifier on the training set (He et al. 2015, Appendix A)
before it is used for detection.

    python tools/recompute_bn.py configs/imagenet_r50.yaml --weights output/imagenet_r50/model_final.pth \\
        --output output/imagenet_r50/model_final_bn.pth [--num-images 50000] [key.sub=value ...]

The config names the classifier and the training data (as for tools/train_cls.py); every training image is
used, augmented as in training (``--num-images N``: a seeded sample of N of them, quicker). Only the BN running means and variances
change; the output is ``{"model", "meta"}`` like the input and works as ``model.backbone.weights=...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.tasks.classification import recompute_bn  # noqa: E402
from detres.tasks.common import read_config  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the classification config the weights were trained with")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    p.add_argument("--weights", required=True, help="classifier checkpoint ({'model', 'meta'}, e.g. model_final.pth)")
    p.add_argument("--output", required=True, help="where to write the weights with the new statistics")
    p.add_argument("--num-images", type=int, default=None,
                   help="measure on a seeded sample of this many training images (default: the whole training set)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default solver.ims_per_batch)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = read_config(args.config, args.overrides, task="classification")
    result = recompute_bn(cfg, args.weights, args.output, num_images=args.num_images, batch_size=args.batch_size,
                          device=args.device, overwrite=args.overwrite)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv, intermixed=True)


if __name__ == "__main__":
    sys.exit(main())
