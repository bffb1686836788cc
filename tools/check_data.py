#!/usr/bin/env python
"""Check a config's data before a long run: decode every image and parse every annotation of the training
and test splits with the same checks as training, in parallel, and list every problem at once.

    python tools/check_data.py configs/voc07_r101.yaml [key.sub=value ...] [--split train|test|all] [--workers N]

Prints one line per problem (``<split>: <file>: <what is wrong>``) and exits 0 when there is none, 2 when
there are (or the config itself is wrong). Works for detection and classification configs.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.engine.logging import setup_logger  # noqa: E402
from detres.tasks.check_data import SPLITS, check_data, format_problems  # noqa: E402
from detres.tasks.common import read_config  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. data.root=/data")
    p.add_argument("--split", default="all", choices=SPLITS, help="which data to check (default: all)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 16)")
    p.add_argument("--limit", type=int, default=200, help="list at most this many problems (default 200)")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = read_config(args.config, args.overrides)
    setup_logger(None)
    problems = check_data(cfg, split=args.split, workers=args.workers)
    if problems:
        print(format_problems(problems, limit=args.limit))
        raise ValueError(f"{args.config}: {len(problems)} problem(s) in the data (listed above); fix them before "
                         "training")
    print(f"{args.config}: the data of split(s) {args.split} is fine")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv, intermixed=True)


if __name__ == "__main__":
    sys.exit(main())
