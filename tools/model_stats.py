#!/usr/bin/env python
"""Parameters and multiply-adds of every backbone, beside the paper's Table 1, and of the C4 detector.

    python tools/model_stats.py                      # all backbones, both styles, plus detectors
    python tools/model_stats.py --backbones resnet50 resnet101 --styles msra --no-detector
    python tools/model_stats.py --json stats.json

Classifier rows: ``build_classifier(name, style=...)`` at 1x3x224x224; GFLOPs = multiply-adds / 1e9 of
the conv and fc layers as torch.utils.flop_counter counts them (``detres.backbones.stats``);
parameters include the BN affines and the 1000-way fc. The paper's Table 1 counts the original (msra)
networks: the "pytorch" style moves the stride into the 3x3 conv, so its first 1x1 of a down-sampling
block runs at the higher resolution (ResNet-50: 4.1 instead of 3.8).

Detector rows (``detres.modeling.stats.detector_stats``): ``build_detector(DetectorSpec(backbone=BackboneSpec(name,
style=...), rpn=RPNSpec(post_nms_top_n_test=300)), 21)`` in eval mode on one 600x1000 image (padded to 608x1024 by the size-divisible-by-32 batching). Counted:
the trunk (conv1..conv4), the RPN head (3x3 conv + sibling 1x1s) on the stride-16 map, and the RoI
head (conv5 + pooling, or fc6/fc7 for VGG-16) and predictor on exactly 300 RoIs. The RPN's NMS
threshold is set to 1.0 for the count so that 300 proposals always survive, whatever the random
weights score (and the residual branches' last BN scale is zeroed so random activations stay finite;
the count depends on shapes only). Not counted (no multiply-adds by flop_counter's rules): anchor generation, box
decoding, NMS, RoIAlign/RoIPool bilinear sampling, normalisation of the input.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from detres.backbones import has_style, list_backbones
from detres.backbones.stats import classifier_stats
from detres.modeling.stats import detector_stats
from detres.utils.cli import positive_int, run_tool
from detres.utils.io import atomic_write

STYLES = ("msra", "pytorch")


def _styles_for(name: str, styles: Sequence[str]) -> list[str]:
    return list(styles) if has_style(name) else ["pytorch"]  # the stride placement is a ResNet option


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list_backbones(), help="default: all")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--no-detector", action="store_true", help="skip the 600x1000 detector counts")
    parser.add_argument("--detector-size", type=positive_int, nargs=2, default=(600, 1000), metavar=("H", "W"))
    parser.add_argument("--proposals", type=positive_int, default=300)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    return parser


def run(args: argparse.Namespace) -> int:
    unknown = [b for b in args.backbones if b not in list_backbones()]
    if unknown:
        raise ValueError(f"--backbones: unknown {unknown}; choose from {list_backbones()}")
    rows = [classifier_stats(b, s) for b in args.backbones for s in _styles_for(b, args.styles)]
    print("Classifiers at 224x224 (GFLOPs = multiply-adds x 1e-9; paper = He et al. 2015, Table 1)")
    print(f"{'backbone':<10} {'style':<8} {'params(M)':>10} {'GFLOPs':>8} {'paper':>7} {'diff':>8}")
    for r in rows:
        paper = f"{r['paper_gflops']:.1f}" if r["paper_gflops"] is not None else "-"
        diff = f"{r['diff_pct']:+.1f}%" if r["diff_pct"] is not None else "-"
        print(f"{r['backbone']:<10} {r['style']:<8} {r['params_m']:>10.2f} {r['gflops']:>8.2f} {paper:>7} {diff:>8}")
    det_rows = []
    if not args.no_detector:
        h, w = args.detector_size
        print(f"\nC4 Faster R-CNN per image at {h}x{w}, {args.proposals} proposals "
              "(trunk + RPN head + RoI head on the proposals; NMS/RoIAlign not counted)")
        print(f"{'backbone':<10} {'style':<8} {'params(M)':>10} {'GFLOPs':>8} {'RoIs':>6}")
        for b in args.backbones:
            for s in _styles_for(b, args.styles):
                r = detector_stats(b, s, height=h, width=w, proposals=args.proposals)
                det_rows.append(r)
                print(f"{r['backbone']:<10} {r['style']:<8} {r['params_m']:>10.2f} {r['gflops']:>8.1f} {r['rois']:>6}")
    if args.json:
        atomic_write(args.json, lambda f: json.dump({"classifiers": rows, "detectors": det_rows}, f, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
