#!/usr/bin/env python
"""Download a data set by name into the layout the configs read:
``python tools/get_data.py voc2007|voc2012|coco2014|coco2017 [--root DIR]``.

The official archives are downloaded into ``<root>/downloads/`` (an interrupted download resumes where it
stopped), checked, unpacked (``<root>/VOCdevkit/VOC2007``, ``<root>/coco/...``) and deleted; a second run finds
them unpacked and downloads nothing. ``$DETRES_MIRROR=http://host:port`` fetches from a mirror instead.
Prints the config override (and ``tools/eval.py``'s ``--data-root``) that points at the data.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detres.data.download import DATASETS, get_data, list_data  # noqa: E402
from detres.utils.cli import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list_data(), help="the data set")
    p.add_argument("--root", default=None, help="data root (default: $DETRES_DATA or ./data)")
    return p


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = get_data(args.name, args.root)
    print(f"{args.name} is in {root}")
    print(f"use: data.root={root}   (tools/eval.py: --data-root {root}; or export DETRES_DATA={root})")
    if DATASETS[args.name].note:
        print(f"note: {DATASETS[args.name].note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
