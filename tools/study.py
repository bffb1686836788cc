#!/usr/bin/env python
"""The paper's own evidence on the degradation problem (He et al. 2015, Sec. 4.2), over run folders.

    python tools/study.py curves RUN... --out fig6.png        # Fig. 6: training (thin) and test (bold) error
    python tools/study.py responses RUN... --out fig7.png     # Fig. 7: std of each 3x3 layer's response
    python tools/study.py table RUN...                        # Table 6: test error beside the paper's
    python tools/study.py demo [--out output/degradation]     # the degradation problem on a laptop, no download

RUN folders come from tools/train_cls.py with the CIFAR-10 configs (configs/cifar10_*.yaml). The demo trains
plain-20/56 and ResNet-20/56 on scikit-learn's 8x8 digits with the CIFAR recipe, draws Fig. 6 and Fig. 7 and
says whether the paper's observations hold (README "The degradation problem").
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.tasks.study import degradation_demo, error_curves, responses, table6  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name, default in (("curves", "fig6_error_curves.png"), ("responses", "fig7_responses.png")):
        s = sub.add_parser(name)
        s.add_argument("runs", nargs="+", help="classification run folders")
        s.add_argument("--out", default=default)
    sub.add_parser("table").add_argument("runs", nargs="+", help="classification run folders")
    d = sub.add_parser("demo")
    d.add_argument("--out", default="output/degradation")
    d.add_argument("--iters", type=int, default=None, help="iterations per net (default: the demo's)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.what == "curves":
        print(error_curves(args.runs, args.out))
    elif args.what == "responses":
        print(responses(args.runs, args.out))
    elif args.what == "table":
        print(table6(args.runs))
    else:
        settings = {"max_iter": args.iters} if args.iters else None
        summary = degradation_demo(args.out, settings=settings, progress=False)
        print(json.dumps({k: summary[k] for k in ("nets", "mean_response_std", "observed") if k in summary}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
