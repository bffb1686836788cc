#!/usr/bin/env python
"""Benchmarks: ``python tools/benchmark.py <name> [options]``; prints the figures as JSON.

  voc-eval   VOC07-test-sized evaluation (4,952 images, ~12,000 objects, 120,000 detections)
  data       data pipeline images/s (JPEG decode + resize to 600/1000 + flip, to a tensor) per worker count
  train-step seconds per detection training step of each paper config (synthetic 600x800 images)
  cls-step   seconds per ImageNet training step of each imagenet_*.yaml config

The table of benchmarks is ``detres.benchmarks.BENCHMARKS``; add one with ``@register``.
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.benchmarks import BENCHMARKS  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="name", required=True)
    for b in BENCHMARKS.values():
        b.add_arguments(sub.add_parser(b.name, help=b.help, description=b.help))
    return p


def run(args: argparse.Namespace) -> int:
    print(json.dumps(BENCHMARKS[args.name].run(args), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
