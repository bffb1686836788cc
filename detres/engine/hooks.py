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

__all__ = ["CheckpointHook", "EvalHook", "MetricsHook", "ErrorDrivenLR", "format_log_line"]

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


class ErrorDrivenLR(HookBase):
    """A learning-rate multiplier driven by the training error, on top of the task's schedule.

    The training error is the loss function's ``train_error`` entry (the batch's top-1 error in [0, 1]),
    averaged over ranks. Two rules, each optional:

    * warmup until an error (He et al. 2015, Sec. 4.2, ResNet-110: "0.01 ... until the training error is
      below 80%"): the rate is ``warmup_factor`` x the schedule's until the mean error of the last
      ``window`` iterations is below ``warmup_until_error``, then the schedule's own rate;
    * drop on plateau (Sec. 3.4: "divided by 10 when the error plateaus"): every ``window`` iterations the
      mean error of those iterations is handed to torch's ``ReduceLROnPlateau`` (mode min, relative
      ``plateau_threshold``, ``plateau_patience`` windows without improvement), whose rate multiplies the
      schedule's (it starts at 1 and is multiplied by ``gamma`` at each drop).

    Register it before the checkpoint hook: it sets the optimiser's rates in ``after_step`` (after the
    scheduler's step), so a checkpoint holds them; :meth:`before_train` recovers the multiplier of a resumed
    run from the ratio of the optimiser's rate to the scheduler's (the plateau counters start afresh).
    """

    def __init__(self, *, window: int, warmup_until_error: float | None, warmup_factor: float, plateau: bool,
                 gamma: float, plateau_patience: int, plateau_threshold: float):
        if window < 1:
            raise ValueError(f"window must be >= 1 iteration, got {window}")
        if warmup_until_error is not None and not 0 < warmup_until_error <= 1:
            raise ValueError(f"warmup_until_error must be an error in (0, 1], got {warmup_until_error}")
        self.window, self.warmup_until_error, self.warmup_factor = int(window), warmup_until_error, float(warmup_factor)
        self.warming = warmup_until_error is not None
        self.plateau = None
        if plateau:
            self._unit = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self._unit, mode="min", factor=gamma, patience=plateau_patience, threshold=plateau_threshold,
                threshold_mode="rel", eps=0.0)
        self._errors: deque = deque(maxlen=self.window)
        self.warmup_ended_at: int | None = None
        self.drops: list[int] = []

    @property
    def factor(self) -> float:
        """The multiplier applied now to the schedule's rates."""
        f = self.warmup_factor if self.warming else 1.0
        if self.plateau is not None:
            f *= self._unit.param_groups[0]["lr"]
        return f

    def _scheduled(self) -> list[float]:
        return list(self.trainer.scheduler.get_last_lr())

    def _apply(self) -> None:
        for group, lr in zip(self.trainer.optimizer.param_groups, self._scheduled()):
            group["lr"] = lr * self.factor

    def before_train(self) -> None:
        t = self.trainer
        if t.start_iter > 0:  # resumed: the checkpoint's optimiser holds the rate this hook had set
            scheduled, actual = self._scheduled()[0], t.optimizer.param_groups[0]["lr"]
            ratio = actual / scheduled if scheduled > 0 else 1.0
            if self.warming and abs(ratio - self.warmup_factor) > 1e-6 * max(1.0, ratio):
                self.warming = False
                self.warmup_ended_at = t.start_iter
            if self.plateau is not None:
                self._unit.param_groups[0]["lr"] = ratio / (self.warmup_factor if self.warming else 1.0)
        self._apply()

    def after_step(self) -> None:
        t = self.trainer
        if "train_error" not in t.losses:
            raise ValueError("ErrorDrivenLR needs the loss function to return 'train_error'")
        self._errors.append(float(comm.reduce_dict({"e": t.losses["train_error"]})["e"]))
        full = len(self._errors) == self.window
        mean = sum(self._errors) / len(self._errors)
        if self.warming and full and mean < self.warmup_until_error:
            self.warming = False
            self.warmup_ended_at = t.iter
            logger.info("training error %.3f < %.3f over the last %d iterations: warmup ends at iteration %d",
                        mean, self.warmup_until_error, self.window, t.iter)
        elif self.plateau is not None and not self.warming and t.iter % self.window == 0 and full:
            before = self.factor
            self.plateau.step(mean)
            if self.factor < before:
                self.drops.append(t.iter)
                logger.info("training error plateaued at %.4f: learning rate divided by %g at iteration %d",
                            mean, before / self.factor, t.iter)
        self._apply()
