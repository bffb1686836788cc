"""The one iteration-based training loop, shared by detection and classification.

:func:`train` knows nothing about the task: it calls ``loss_fn(model, batch) -> dict of scalar losses``
on batches from ``train_loader_factory(start_iter)``, steps SGD and the per-iteration LR scheduler,
and handles mixed precision, gradient clipping, logging, periodic checkpoints and evaluation, resuming,
and non-finite losses. It works unchanged under torchrun/DDP (rank 0 logs and writes files).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import deque
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from detres.engine import distributed as du
from detres.engine.checkpoint import (checkpoint_name, find_last_checkpoint, get_rng_state, load_checkpoint,
                                      save_checkpoint, set_rng_state)
from detres.engine.logging import MetricsWriter, format_seconds

__all__ = ["train", "seed_all", "autocast_context", "detection_loss_fn", "write_json_atomic"]

logger = logging.getLogger("detres")

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def time_sgd_steps(loss_of_batch: Callable[[Any], torch.Tensor], make_batch: Callable[[], Any],
                   optimizer: torch.optim.Optimizer, *, iters: int, warmup: int, device: torch.device,
                   amp: str | None = None) -> list[float]:
    """Seconds of each of `iters` timed SGD steps (forward, backward, update) after `warmup` untimed ones.

    Batch creation is not timed; CUDA is synchronised around each step. Used by the speed benchmarks.
    """
    times = []
    for i in range(warmup + iters):
        batch = make_batch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast_context(amp, device):
            loss = loss_of_batch(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def autocast_context(amp: str | None, device: torch.device):
    """``torch.autocast`` for "bf16"/"fp16" (fp16 needs CUDA; bf16 also works on CPU), else a no-op."""
    if amp is None:
        return nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"solver.amp must be 'bf16', 'fp16' or None, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("solver.amp='fp16' needs a CUDA device; use 'bf16' or None on CPU")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def detection_loss_fn(model: nn.Module, batch: tuple[list[torch.Tensor], list[dict]]) -> dict[str, torch.Tensor]:
    """Detection loss: ``model(images, targets)`` with the batch moved to the model's device."""
    images, targets = batch
    device = next(model.parameters()).device
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return model(images, targets)


def write_json_atomic(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _default_batch_size(batch: Any) -> int:
    try:
        first = batch[0]
        return int(first.shape[0]) if torch.is_tensor(first) else len(first)
    except Exception:
        return 1


def _flat_scalars(d: dict, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(*, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
          optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
          train_loader_factory: Callable[[int], Iterable], max_iter: int, output_dir: str,
          checkpoint_period: int, eval_period: int = 0, eval_fn: Callable[[nn.Module], dict | None] | None = None,
          amp: str | None = None, clip_grad_norm: float | None = None, log_period: int = 20,
          meta: dict | None = None, config_dict: dict | None = None, resume: bool = False,
          device: torch.device | str = "cpu", batch_size_fn: Callable[[Any], int] | None = None,
          progress: bool = True) -> dict:
    """Train ``model`` for ``max_iter`` iterations; return ``{"iteration", "losses", "eval"}``.

    Args:
        model: the module to train, already on ``device`` and wrapped in DDP if distributed.
        loss_fn: ``loss_fn(model, batch) -> {name: scalar tensor}``; the total loss is their sum.
        train_loader_factory: ``f(start_iter)`` -> iterable of batches beginning at global iteration
            ``start_iter`` (so a resumed run sees the same data order); normally infinite.
        checkpoint_period / eval_period / log_period: in iterations; 0 disables the periodic action
            (the final checkpoint ``model_final.pth`` and the final evaluation always happen).
        eval_fn: ``f(unwrapped_model) -> dict`` (called on every rank; rank 0 writes ``eval.json``).
        amp: None | "bf16" | "fp16"; fp16 uses a GradScaler.
        clip_grad_norm: max global L2 norm of the gradients, or None.
        meta: weights metadata stored in checkpoints (so they are loadable as ``weights=``).
        config_dict: the merged config, stored in checkpoints.
        resume: continue from ``find_last_checkpoint(output_dir)`` (iteration, optimiser, scheduler,
            scaler, RNG states); a fresh start if there is none.
        batch_size_fn: images in a batch (per process), for images/s; default ``len(batch[0])``.

    Raises:
        FloatingPointError: the loss (on any rank) or the parameters became non-finite; names the
            iteration and the last good checkpoint, which is left in place.
    """
    device = torch.device(device)
    main = du.is_main_process()
    world = du.get_world_size()
    raw_model = du.unwrap_model(model)
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    if main:
        os.makedirs(output_dir, exist_ok=True)
    use_scaler = amp == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    autocast_context(amp, device)  # validate early

    start_iter = 0
    rng_to_restore = None
    last_good = None
    if resume:
        path = find_last_checkpoint(output_dir)
        if path is None:
            logger.info("--resume: no checkpoint in %s, starting from iteration 0", output_dir)
        else:
            state = load_checkpoint(path, map_location=device)
            raw_model.load_state_dict(state["model"])
            for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
                if state.get(key) is not None:
                    obj.load_state_dict(state[key])
            start_iter = int(state["iteration"])
            rngs = state.get("rng") or []
            if len(rngs) == world:
                rng_to_restore = rngs[du.get_rank()]
            else:
                logger.warning("checkpoint %s has RNG states for %d processes, running %d: RNG not restored",
                               path, len(rngs), world)
            last_good = path
            logger.info("resumed from %s at iteration %d (lr %.6g)", path, start_iter,
                        optimizer.param_groups[0]["lr"])

    bs_fn = batch_size_fn or _default_batch_size
    writer = MetricsWriter(output_dir, max_iter=max_iter, start_iter=start_iter, enabled=main, progress=progress)

    def gather_rng() -> list:
        mine = get_rng_state()
        if not du.is_distributed():
            return [mine]
        allr: list = [None] * world
        torch.distributed.all_gather_object(allr, mine)
        return allr

    def make_state(iteration: int) -> dict:
        return {"model": raw_model.state_dict(), "meta": dict(meta or {}), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "iteration": iteration,
                "rng": gather_rng(), "config": config_dict or {}}

    def checkpoint(iteration: int, name: str) -> str:
        nonlocal last_good
        if du.all_reduce_flag(not _params_finite(raw_model), device):
            raise FloatingPointError(
                f"parameters became non-finite by iteration {iteration}; not saving {name}. "
                f"Last good checkpoint: {last_good or 'none'}")
        state = make_state(iteration)  # collective (RNG gather): every rank calls it
        path = os.path.join(output_dir, name)
        if main:
            save_checkpoint(state, path)
        du.barrier()
        last_good = path
        return path

    def evaluate(iteration: int) -> dict | None:
        if eval_fn is None:
            return None
        t0 = time.perf_counter()
        raw_model.eval()
        with torch.no_grad():
            results = eval_fn(raw_model)
        raw_model.train()
        if main and results is not None:
            write_json_atomic(results, os.path.join(output_dir, "eval.json"))
            scalars = _flat_scalars(results, "eval/")
            scalars["eval/time_s"] = time.perf_counter() - t0
            writer.write(iteration, scalars)
            logger.info("evaluation at iteration %d: %s", iteration,
                        ", ".join(f"{k}={v:.4f}" for k, v in _flat_scalars(results, "").items()))
        return results

    loader: Iterator = iter(train_loader_factory(start_iter))
    # Restore RNG after the loader's iterator exists: creating it draws from torch's generator.
    if rng_to_restore is not None:
        set_rng_state(rng_to_restore)

    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    times: deque = deque(maxlen=max(1, log_period))
    last_losses: dict[str, float] = {}
    eval_results = None
    t_start = time.perf_counter()
    try:
        for it in range(start_iter, max_iter):
            t0 = time.perf_counter()
            try:
                batch = next(loader)
            except StopIteration:
                loader = iter(train_loader_factory(it))
                batch = next(loader)
            n_images = bs_fn(batch) * world
            with autocast_context(amp, device):
                losses = loss_fn(model, batch)
            if not isinstance(losses, dict) or not losses:
                raise ValueError("loss_fn must return a non-empty dict of scalar tensors")
            total = sum(v.float() for v in losses.values())
            bad = not bool(torch.isfinite(total.detach()))
            if du.all_reduce_flag(bad, device):
                detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise FloatingPointError(
                    f"non-finite loss at iteration {it} ({it} iterations completed): {detail}. "
                    f"Training stopped; last good checkpoint: {last_good or 'none (no checkpoint written yet)'}. "
                    f"Try a lower solver.base_lr, more solver.warmup_iters or solver.clip_grad_norm.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            grad_norm = None
            if clip_grad_norm is not None:
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm))
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            done = it + 1
            dt = time.perf_counter() - t0
            times.append((dt, n_images))

            avg_dt = sum(t for t, _ in times) / len(times)
            ips = sum(n for _, n in times) / max(1e-9, sum(t for t, _ in times))
            eta = avg_dt * (max_iter - done)
            writer.progress(1, loss=float(total.detach()), lr=lr, img_s=ips, eta=format_seconds(eta))
            if log_period > 0 and (done % log_period == 0 or done == max_iter or done == start_iter + 1):
                reduced = du.reduce_dict({k: v for k, v in losses.items()})
                last_losses = {k: float(v) for k, v in reduced.items()}
                row = dict(last_losses)
                row.update(total_loss=sum(last_losses.values()), lr=lr, time=avg_dt, images_per_s=ips, eta_s=eta)
                if grad_norm is not None:
                    row["grad_norm"] = grad_norm
                writer.write(done, row)
            if checkpoint_period > 0 and done % checkpoint_period == 0 and done < max_iter:
                checkpoint(done, checkpoint_name(done))
            if eval_period > 0 and done % eval_period == 0 and done < max_iter:
                eval_results = evaluate(done)
        writer.progress(0)
        if start_iter < max_iter:
            logger.info("training: %d iterations in %s", max_iter - start_iter,
                        format_seconds(time.perf_counter() - t_start))
        checkpoint(max_iter, "model_final.pth")
        eval_results = evaluate(max_iter)
    finally:
        writer.close()
    return {"iteration": max_iter, "losses": last_losses, "eval": eval_results}
