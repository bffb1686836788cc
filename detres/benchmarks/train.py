"""Training-speed benchmarks: ``train-step`` (detection configs) and ``cls-step`` (ImageNet configs).

Both time forward + backward + SGD step on synthetic inputs, so only the model is measured (the data
pipeline has its own ``data`` benchmark). On CUDA they honour the config's ``solver.amp``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detres.benchmarks import register

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _configs(args: argparse.Namespace, prefix_ok) -> list[Path]:
    paths = [Path(c) for c in args.configs] or sorted(
        p for p in CONFIG_DIR.glob("*.yaml") if prefix_ok(p.name))
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: config file not found")
    return paths


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="*", help="config files (default: every matching file in configs/)")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per config (after 1 warm-up)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--set", dest="opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides applied to every config")


def _det_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--batch", type=int, default=None, help="images per step (default: solver.ims_per_batch)")


@register("train-step", "seconds per detection training step of each paper config (600x800 images)", _det_args)
def bench_train_step(args: argparse.Namespace) -> dict[str, Any]:
    from detres.config import load_config
    from detres.engine.builders import time_train_step

    out = {}
    for path in _configs(args, lambda n: not n.startswith(("imagenet_", "demo_"))):
        overrides = list(args.opts or []) + ([f"solver.ims_per_batch={args.batch}"] if args.batch else [])
        cfg = load_config(path, overrides)
        out[path.stem] = time_train_step(cfg, iters=args.iters, device=args.device)
    return out


@register("cls-step", "seconds per ImageNet training step of each imagenet_*.yaml config", _common)
def bench_cls_step(args: argparse.Namespace) -> dict[str, Any]:
    from detres.engine.classification import time_train_step

    return {path.stem: time_train_step(str(path), overrides=list(args.opts or []), steps=args.iters, device=args.device)
            for path in _configs(args, lambda n: n.startswith("imagenet_"))}
