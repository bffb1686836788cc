"""What a training run does around the loop: checkpoints, evaluation, metrics and progress.

Each hook is a :class:`~detres.engine.trainer.HookBase` (``before_train``, ``after_step``,
``after_train``); the task wires the default set with :func:`detres.tasks.common.run_training`. Periodic
actions happen when the number of completed iterations is a multiple of their period (0 disables them);
the final checkpoint and the final evaluation always happen.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any, Callable

import torch
from torch import nn

from detres.engine.checkpoint import checkpoint_name, save_checkpoint
from detres.engine.logging import MetricsWriter, format_seconds
from detres.engine.trainer import HookBase
from detres.utils import comm
from detres.utils.io import atomic_write_json

__all__ = ["CheckpointHook", "EvalHook", "MetricsHook", "format_log_line"]

logger = logging.getLogger("detres")

FINAL_CHECKPOINT = "model_final.pth"


#: A parameter this large means training has diverged, even while the loss is still finite.
DIVERGED_WEIGHT = 1e6


def _params_trouble(model: nn.Module) -> str | None:
    """Why the parameters are not fit to save (non-finite or diverged), or None."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"{name} is not finite"
        largest = float(p.detach().abs().max()) if p.numel() else 0.0
        if largest > DIVERGED_WEIGHT:
            return f"{name} reached |w| = {largest:.3g} (> {DIVERGED_WEIGHT:g}): training diverged"
    return None


class CheckpointHook(HookBase):
    """Writes ``model_NNNNNNN.pth`` every ``period`` iterations and ``model_final.pth`` at the end.

    A checkpoint is the trainer's state plus ``meta`` (the weights' preprocessing, so the file also works
    as ``weights=``), ``config`` (the merged config) and ``extra`` (e.g. the class names). The parameters are checked first: a checkpoint
    is never written with non-finite or diverged weights (:data:`DIVERGED_WEIGHT`), so the one named as
    "last good" is good.
    """

    def __init__(self, output_dir: str, *, period: int, meta: dict | None = None, config: dict | None = None,
                 extra: dict | None = None):
        self.output_dir, self.period = output_dir, period
        self.meta, self.config, self.extra = dict(meta or {}), dict(config or {}), dict(extra or {})

    def save(self, name: str) -> str:
        t = self.trainer
        trouble = _params_trouble(t.raw_model)
        if comm.all_reduce_flag(trouble is not None):
            raise FloatingPointError(f"parameters went bad by iteration {t.iter} ({trouble or 'on another rank'}); "
                                     f"not saving {name}. Last good checkpoint: {t.last_checkpoint or 'none'}. "
                                     "Try a lower solver.base_lr, more solver.warmup_iters or solver.clip_grad_norm.")
        state = t.state_dict()  # a collective: every rank calls it
        state.update(self.extra, meta=self.meta, config=self.config)
        path = os.path.join(self.output_dir, name)
        if comm.is_main_process():
            save_checkpoint(state, path)
        comm.barrier()
        t.last_checkpoint = path
        return path

    def after_step(self) -> None:
        done = self.trainer.iter
        if self.period > 0 and done % self.period == 0 and done < self.trainer.max_iter:
            self.save(checkpoint_name(done))

    def after_train(self) -> None:
        self.save(FINAL_CHECKPOINT)


def _flat_scalars(d: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class EvalHook(HookBase):
    """Runs ``eval_fn(model) -> dict`` every ``period`` iterations and at the end (every rank takes part).

    Rank 0 writes the result to ``output_dir/eval.json`` and its numbers, prefixed ``eval/``, to the
    metrics; the last result is ``trainer.eval_results``.
    """

    def __init__(self, eval_fn: Callable[[nn.Module], dict | None], *, period: int, output_dir: str,
                 writer: MetricsWriter):
        self.eval_fn, self.period, self.output_dir, self.writer = eval_fn, period, output_dir, writer

    def evaluate(self) -> dict | None:
        t = self.trainer
        t0 = time.perf_counter()
        model = t.raw_model
        model.eval()
        with torch.no_grad():
            results = self.eval_fn(model)
        model.train()
        if comm.is_main_process() and results is not None:
            atomic_write_json(os.path.join(self.output_dir, "eval.json"), results)
            scalars = _flat_scalars(results, "eval/")
            scalars["eval/time_s"] = time.perf_counter() - t0
            self.writer.write(t.iter, scalars)
            logger.info("evaluation at iteration %d: %s", t.iter,
                        ", ".join(f"{k}={v:.4f}" for k, v in _flat_scalars(results, "").items()))
        t.eval_results = results
        return results

    def after_step(self) -> None:
        done = self.trainer.iter
        if self.period > 0 and done % self.period == 0 and done < self.trainer.max_iter:
            self.evaluate()

    def after_train(self) -> None:
        self.evaluate()


def format_log_line(iteration: int, max_iter: int, losses: dict[str, float], *, lr: float, images_per_s: float,
                    eta_s: float) -> str:
    """The plain log line of one logged iteration, e.g.
    ``iter 20/100  total_loss 1.2346  loss_a 0.5000  lr 0.01  images/s 4.2  eta 00:31``."""
    total = sum(v for k, v in losses.items() if k.startswith("loss"))
    parts = [f"iter {iteration}/{max_iter}", f"total_loss {total:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in sorted(losses.items())]
    parts += [f"lr {lr:.6g}", f"images/s {images_per_s:.1f}", f"eta {format_seconds(eta_s)}"]
    return "  ".join(parts)


class MetricsHook(HookBase):
    """Advances the progress bar every step and, every ``period`` iterations, after the first one and after
    the last one, writes a metrics row (losses averaged over ranks, total loss, lr, seconds per iteration,
    images/s, ETA, gradient norm) and a plain log line (:func:`format_log_line`: log.txt, and stderr when
    no bar is shown)."""

    def __init__(self, writer: MetricsWriter, *, period: int):
        self.writer, self.period = writer, period
        self._times: deque = deque(maxlen=max(1, period))

    def after_step(self) -> None:
        t = self.trainer
        self._times.append((t.step_time, t.step_images))
        seconds = sum(s for s, _ in self._times)
        avg_dt = seconds / len(self._times)
        ips = sum(n for _, n in self._times) / max(1e-9, seconds)
        eta = avg_dt * (t.max_iter - t.iter)
        self.writer.progress(1, loss=sum(float(v) for k, v in t.losses.items() if k.startswith("loss")), lr=t.lr,
                             img_s=ips, eta=format_seconds(eta))
        done = t.iter
        if self.period > 0 and (done % self.period == 0 or done == t.max_iter or done == t.start_iter + 1):
            values = {k: float(v) for k, v in comm.reduce_dict(t.losses).items()}
            row: dict[str, Any] = dict(values, total_loss=sum(v for k, v in values.items() if k.startswith("loss")),
                                       lr=t.lr, time=avg_dt, images_per_s=ips, eta_s=eta)
            if t.grad_norm is not None:
                row["grad_norm"] = t.grad_norm
            self.writer.write(done, row)
            self.writer.log_line(format_log_line(done, t.max_iter, values, lr=t.lr, images_per_s=ips, eta_s=eta))
