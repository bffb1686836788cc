"""Training-speed benchmarks: ``train-step`` (detection configs) and ``cls-step`` (ImageNet configs).

Both time forward + backward + SGD step on synthetic inputs, so only the model is measured (the data
pipeline has its own ``data`` benchmark). On CUDA they honour the config's ``solver.amp``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from detres.benchmarks import register
from detres.tasks.common import read_config
from detres.tasks.timing import cls_step, det_step
from detres.benchmarks.mfu import gpu_peak_tflops, mfu, step_flops
from detres.utils.amp import autocast
from detres.utils.cli import positive_int

__all__ = ["time_sgd_steps", "time_det_step", "time_cls_step"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def time_sgd_steps(loss_of_batch: Callable[[Any], torch.Tensor], make_batch: Callable[[], Any],
                   optimizer: torch.optim.Optimizer, *, iters: int, warmup: int, device: torch.device,
                   amp: str | None = None) -> list[float]:
    """Seconds of each of ``iters`` timed SGD steps (forward, backward, update) after ``warmup`` untimed ones.

    Batch creation is not timed; CUDA is synchronised around each step.
    """
    times = []
    for i in range(warmup + iters):
        batch = make_batch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(amp, device):
            loss = loss_of_batch(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def time_det_step(cfg: Any, *, iters: int = 3, warmup: int = 1, image_size: tuple[int, int] | None = None,
                  device: str | torch.device = "cpu", amp: str | None | object = ..., channels_last: bool = False,
                  compile_modules: bool = False, count_flops: bool = False) -> dict:
    """Seconds per training iteration of ``cfg``'s detector on random images (no data, no weights), with the
    config's SGD (:func:`detres.tasks.timing.det_step`).

    Images are ``image_size`` (H, W), default (min_size, max_size-capped 4:3) as the paper's 600x800;
    each carries 3 random boxes. ``amp`` overrides ``solver.amp``; ``channels_last`` runs trunk and head in
    NHWC; ``compile_modules`` wraps trunk and per-RoI head in ``torch.compile``; ``count_flops`` adds the
    FLOPs of one step and, on a known GPU, the MFU. Returns ``{"s_per_iter", "images_per_s", "iters",
    "image_size", "ims_per_batch", "backbone", ...}``.
    """
    device = torch.device(device)
    torch.manual_seed(0)
    step = det_step(cfg, device=device, image_size=image_size)
    model, opt = step.model, step.optimizer
    amp = step.amp if amp is ... else amp
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
        model.roi_heads.box_head.to(memory_format=torch.channels_last)
    if compile_modules:
        model.backbone = torch.compile(model.backbone)
        model.roi_heads.box_head = torch.compile(model.roi_heads.box_head)
    h, w = step.image_size
    k = step.num_classes - 1

    def batch():
        imgs, tgts = [], []
        for _ in range(step.ims_per_batch):
            img = torch.rand(3, h, w, device=device)
            imgs.append(img.contiguous(memory_format=torch.channels_last) if channels_last else img)
            xy = torch.rand(3, 2) * torch.tensor([w * 0.6, h * 0.6])
            wh = torch.rand(3, 2) * torch.tensor([w * 0.3, h * 0.3]) + 16
            tgts.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                         "labels": torch.randint(1, k + 1, (3,), device=device)})
        return imgs, tgts

    times = time_sgd_steps(lambda b: sum(model(*b).values()), batch, opt, iters=iters, warmup=warmup,
                           device=device, amp=amp)
    seconds = statistics.median(times)
    out = {"s_per_iter": seconds, "images_per_s": step.ims_per_batch / seconds, "iters": iters,
           "image_size": [h, w], "ims_per_batch": step.ims_per_batch, "backbone": step.backbone,
           "amp": amp, "channels_last": channels_last, "compile": compile_modules}
    if count_flops:
        b = batch()
        with autocast(amp, device):
            flops = step_flops(lambda: sum(model(*b).values()))
        opt.zero_grad(set_to_none=True)
        dtype = amp or ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
        peak = gpu_peak_tflops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
        out.update(tflops_per_step=flops / 1e12, achieved_tflops=flops / seconds / 1e12, peak_tflops=peak,
                   mfu=mfu(flops, seconds, peak))
    return out


def time_cls_step(config: str | os.PathLike | Any, *, overrides: Sequence[str] = (), batch_size: int = 2,
                  steps: int = 3, warmup: int = 1, device: str = "cpu") -> dict[str, float]:
    """Seconds per training iteration (forward, backward, SGD step) of a config's classifier (a path, read
    with ``overrides``, or a loaded config), with the config's SGD (:func:`detres.tasks.timing.cls_step`).

    Synthetic inputs ``[batch_size, 3, crop, crop]`` and random labels stand in for data, so only the
    model is timed. Returns ``{"median_s", "min_s", "batch_size", "crop", "params_m"}``.
    """
    cfg = read_config(config, overrides, allow_empty=True) if isinstance(config, (str, os.PathLike)) else config
    dev = torch.device(device)
    step = cls_step(cfg, device=dev)
    model, crop = step.model, step.crop
    images = torch.randn(batch_size, 3, crop, crop, device=dev)
    labels = torch.randint(0, step.num_classes, (batch_size,), device=dev)
    times = time_sgd_steps(lambda b: step.loss(model, b)["loss_cls"], lambda: (images, labels), step.optimizer,
                           iters=steps, warmup=warmup, device=dev, amp=step.amp)
    return {"median_s": statistics.median(times), "min_s": min(times), "batch_size": batch_size, "crop": crop,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _configs(args: argparse.Namespace, prefix_ok) -> list[Path]:
    paths = [Path(c) for c in args.configs] or sorted(
        p for p in CONFIG_DIR.glob("*.yaml") if prefix_ok(p.name))
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: config file not found")
    return paths


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="*", help="config files (default: every matching file in configs/)")
    p.add_argument("--iters", type=positive_int, default=2, help="timed iterations per config (after 1 warm-up)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--set", dest="opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides applied to every config")


#: ``--variants`` of train-step: (amp, channels_last, compile)
VARIANTS = {"fp32": (None, False, False), "bf16": ("bf16", False, False),
            "bf16-channels-last": ("bf16", True, False), "bf16-compile": ("bf16", True, True)}


def _det_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--batch", type=int, default=None, help="images per step (default: solver.ims_per_batch)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image size (default: min_size x 4:3, e.g. 600x800)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="time these precision/layout variants (default: the config's solver.amp only)")
    p.add_argument("--mfu", action="store_true", help="count the FLOPs of a step and report MFU on a known GPU")


@register("train-step", "seconds per detection training step of each paper config (600x800 images)", _det_args)
def bench_train_step(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for path in _configs(args, lambda n: not n.startswith(("imagenet_", "demo_"))):
        overrides = list(args.opts or []) + ([f"solver.ims_per_batch={args.batch}"] if args.batch else [])
        cfg = read_config(path, overrides, allow_empty=True)
        size = tuple(args.size) if args.size else None
        if not args.variants:
            out[path.stem] = time_det_step(cfg, iters=args.iters, device=args.device, image_size=size,
                                           count_flops=args.mfu)
            continue
        for name in args.variants:
            amp, channels_last, compile_modules = VARIANTS[name]
            out[f"{path.stem}/{name}"] = time_det_step(cfg, iters=args.iters, device=args.device, image_size=size,
                                                       amp=amp, channels_last=channels_last,
                                                       compile_modules=compile_modules, count_flops=args.mfu)
    return out


@register("cls-step", "seconds per ImageNet training step of each imagenet_*.yaml config", _common)
def bench_cls_step(args: argparse.Namespace) -> dict[str, Any]:
    return {path.stem: time_cls_step(str(path), overrides=list(args.opts or []), steps=args.iters, device=args.device)
            for path in _configs(args, lambda n: n.startswith("imagenet_"))}
