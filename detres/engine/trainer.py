"""The one iteration-based training loop, shared by detection and classification.

:class:`Trainer` knows nothing about the task: each step it draws a batch from
``loader_factory(start_iter)``, calls ``loss_fn(model, batch) -> {name: scalar tensor}``, refuses a
non-finite loss, steps the optimiser (mixed precision and gradient clipping included) and the
per-iteration LR scheduler. Everything else a run does at some iterations (checkpoints, evaluation,
metrics, the progress bar) is a :class:`HookBase` in :mod:`detres.engine.hooks`, called after each
step and at the end, as detectron2's ``TrainerBase`` does.

Its whole state (model, optimiser, scheduler, grad scaler, iteration and every RNG) is
:meth:`Trainer.state_dict`; :meth:`Trainer.load_state_dict` resumes from it exactly: the loader is
started at the saved iteration and the RNG states are restored after it exists. The same code runs
under torchrun/DDP (``model`` wrapped in DDP; collectives are called on every rank).
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from detres.utils import comm
from detres.utils.amp import autocast, check_amp, needs_grad_scaler
from detres.utils.cli import RunFault
from detres.utils.rng import get_rng_state, set_rng_state

__all__ = ["HookBase", "Trainer"]

logger = logging.getLogger("detres")


class HookBase:
    """Something a run does around the loop. Override any of the three methods; ``self.trainer`` is set
    by :meth:`Trainer.register_hooks`. Hooks run on every rank, in registration order."""

    trainer: "Trainer"

    def before_train(self) -> None:
        """Called once before the first iteration (after a resume has restored the trainer's state)."""

    def after_step(self) -> None:
        """Called after each step; ``trainer.iter`` iterations are then complete."""

    def after_train(self) -> None:
        """Called once after the last iteration (not when training stops on an error)."""


def _default_batch_size(batch: Any) -> int:
    try:
        first = batch[0]
        return int(first.shape[0]) if torch.is_tensor(first) else len(first)
    except (TypeError, IndexError, AttributeError):
        return 1


class Trainer:
    """SGD over ``loss_fn`` for ``max_iter`` iterations.

    Args:
        model: the module to train, on ``device`` and wrapped in DDP when distributed.
        loss_fn: ``loss_fn(model, batch) -> {name: scalar tensor}``; the total loss is the sum of the entries
            whose name starts with "loss"; the others (e.g. ``train_error``) are only logged.
        optimizer, scheduler: the scheduler is stepped once per iteration.
        loader_factory: ``f(first_batch)`` -> iterable of batches beginning at batch ``first_batch`` of the
            run's stream (so a resumed run sees the same data order); normally infinite. An iteration
            consumes ``iter_size`` batches, so iteration ``i`` starts at batch ``i * iter_size``.
        max_iter: iterations to train.
        device: where the model lives (decides the autocast and the grad scaler).
        amp: None | "bf16" | "fp16", see :mod:`detres.utils.amp`.
        clip_grad_norm: maximum global L2 norm of the gradients, or None.
        iter_size: batches whose gradients are accumulated (averaged) before each update (Caffe's
            ``iter_size``): the same update as one batch ``iter_size`` times larger.
        batch_size_fn: images in a batch (this process), for images/s; default ``len(batch[0])``.

    ``iter`` counts the completed iterations (the 0-based index of the step being run). After each step
    the hooks can read it, ``losses`` (the step's detached loss tensors), ``lr`` (the rate it used),
    ``grad_norm``, ``step_time`` (s) and ``step_images`` (over all processes and accumulated batches). ``last_checkpoint`` is kept by the checkpoint hook and named
    when training stops on a non-finite loss.
    """

    def __init__(self, *, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 loader_factory: Callable[[int], Iterable], max_iter: int, device: torch.device | str = "cpu",
                 amp: str | None = None, clip_grad_norm: float | None = None, iter_size: int = 1,
                 batch_size_fn: Callable[[Any], int] | None = None) -> None:
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.loader_factory = loader_factory
        self.max_iter = max_iter
        self.device = torch.device(device)
        self.amp = check_amp(amp)
        self.clip_grad_norm = clip_grad_norm
        self.iter_size = iter_size
        self.batch_size_fn = batch_size_fn or _default_batch_size
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(amp, self.device))
        self.hooks: list[HookBase] = []
        self.start_iter = self.iter = 0
        self.last_checkpoint: str | None = None
        self.eval_results: dict | None = None
        self.losses: dict[str, torch.Tensor] = {}
        self.lr = self.step_time = 0.0
        self.grad_norm: float | None = None
        self.step_images = 0
        self._rng_to_restore: dict | None = None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self.dist_timeout: float | None = None  # the process group's timeout (s), named when a rank stops answering

    @property
    def raw_model(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return comm.unwrap_model(self.model)

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (a collective: RNG states are gathered from every rank)."""
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iter, "rng": comm.all_gather_objects(get_rng_state())}

    def load_state_dict(self, state: dict[str, Any], *, source: str = "checkpoint", keep_solver: bool = True) -> None:
        """Resume from :meth:`state_dict`'s output: weights, optimiser, scheduler, scaler, iteration; the RNG
        states are restored when training starts (only with the same number of processes).

        ``keep_solver=False`` keeps the optimiser's momentum but this trainer's own learning rates, weight
        decay and schedule, placed at the checkpoint's iteration (a changed config applied on resume)."""
        self.raw_model.load_state_dict(state["model"])
        own = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.start_iter = self.iter = int(state["iteration"])
        if keep_solver:
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        else:
            for group, settings in zip(self.optimizer.param_groups, own):
                group.update(settings)
            self.scheduler.last_epoch = self.start_iter - 1
            self.scheduler.step()  # the rate of the schedule at the checkpoint's iteration
        rngs = state.get("rng") or []
        if len(rngs) == comm.get_world_size():
            self._rng_to_restore = rngs[comm.get_rank()]
        else:
            logger.warning("%s has RNG states for %d processes, running %d: RNG not restored", source,
                           len(rngs), comm.get_world_size())

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run iterations ``start_iter .. max_iter - 1``; returns ``{"iteration", "losses", "eval"}``.

        Distributed: each rank records the iterations it completed in the process group's store; a collective
        that fails because another rank stopped answering (hung past ``dist_timeout``, or dead) ends training
        with :class:`~detres.utils.cli.RunFault`, one line naming that rank (:func:`detres.utils.comm.peer_failure`)."""
        for h in self.hooks:
            h.before_train()
        self._batch_index = self.start_iter * self.iter_size
        self._data = iter(self.loader_factory(self._batch_index))
        if self._rng_to_restore is not None:  # after the loader exists: starting it may draw random numbers
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        self.model.train()
        t_start = time.perf_counter()
        comm.heartbeat(self.iter)
        while self.iter < self.max_iter:
            try:
                self.run_step()
                self.iter += 1
                for h in self.hooks:
                    h.after_step()
            except RuntimeError as e:  # a collective whose peer stopped answering: say which rank, one line
                why = comm.peer_failure(e, timeout_s=self.dist_timeout)
                if why is None:
                    raise
                raise RunFault(why) from e
            comm.heartbeat(self.iter)
        if self.start_iter < self.max_iter:
            logger.info("training: %d iterations in %.1f s", self.max_iter - self.start_iter,
                        time.perf_counter() - t_start)
        for h in self.hooks:
            h.after_train()
        return {"iteration": self.max_iter, "losses": {k: float(v) for k, v in self.losses.items()},
                "eval": self.eval_results}

    def _next_batch(self) -> Any:
        try:
            batch = next(self._data)
        except StopIteration:  # a finite loader: start it again where it stopped
            self._data = iter(self.loader_factory(self._batch_index))
            batch = next(self._data)
        self._batch_index += 1
        return batch

    def run_step(self) -> None:
        """One SGD step; raises FloatingPointError (naming the last good checkpoint) on a non-finite loss."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        summed: dict[str, torch.Tensor] = {}
        images = 0
        for k in range(self.iter_size):
            batch = self._next_batch()
            with autocast(self.amp, self.device):
                losses = self.loss_fn(self.model, batch)
            if not isinstance(losses, dict) or not any(k.startswith("loss") for k in losses):
                raise ValueError("loss_fn must return a dict of scalar tensors with at least one 'loss*' entry")
            total = sum(v.float() for k, v in losses.items() if k.startswith("loss"))
            if comm.all_reduce_flag(not bool(torch.isfinite(total.detach()))):
                detail = ", ".join(f"{name}={float(v.detach()):.4g}" for name, v in losses.items())
                raise FloatingPointError(
                    f"non-finite loss at iteration {self.iter} ({self.iter} iterations completed): {detail}. "
                    f"Training stopped; last good checkpoint: {self.last_checkpoint or 'none (no checkpoint written yet)'}. "
                    f"Try a lower solver.base_lr, more solver.warmup_iters or solver.clip_grad_norm.")
            # DDP: synchronise the gradients once, on the last accumulated batch
            last = k == self.iter_size - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                self.scaler.scale(total / self.iter_size).backward()
            for name, v in losses.items():
                summed[name] = summed.get(name, 0.0) + v.detach() / self.iter_size
            images += self.batch_size_fn(batch)
        self.grad_norm = None
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.losses = summed
        self.step_images = images * comm.get_world_size()
        self.step_time = time.perf_counter() - t0
