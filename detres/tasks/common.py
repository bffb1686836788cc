"""What both tasks share: the solver read from ``cfg.solver`` and a training run with the default hooks.

Both schemas (:class:`~detres.config.DetConfig`, :class:`~detres.config.ClsConfig`) name these fields
alike: ``solver.{base_lr, momentum, weight_decay, ims_per_batch, reference_batch, steps, gamma,
warmup_iters, warmup_factor, max_iter, checkpoint_period, log_period, clip_grad_norm, amp}``,
``test.eval_period`` and ``output_dir``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from detres.config import config_to_dict, save_config
from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint
from detres.engine.hooks import CheckpointHook, EvalHook, MetricsHook
from detres.engine.logging import MetricsWriter, setup_logger
from detres.engine.solver import build_sgd, build_warmup_multistep, scale_lr
from detres.engine.trainer import Trainer
from detres.evaluation.plots import plot_training_curves
from detres.utils import comm
from detres.utils.io import atomic_write_text

__all__ = ["check_choice", "scaled_lr", "warmup_iters", "build_solver", "start_run", "run_training", "AUTO_WARMUP_ITERS"]

logger = logging.getLogger("detres")


def check_choice(key: str, value: Any, choices) -> Any:
    """``value`` if it is one of ``choices``; else ValueError naming the config key and the choices."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"config key '{key}': must be one of {choices}, got {value!r}")
    return value


#: Length of the automatic warmup (``solver.warmup_iters: null`` when the scaling rule raises the rate):
#: detectron2's 1000 iterations, at most a tenth of the run.
AUTO_WARMUP_ITERS = 1000


def scaled_lr(cfg: Any, world_size: int | None = None) -> tuple[float, int]:
    """(``solver.base_lr`` after the linear scaling rule, the total batch): the rate is multiplied by
    ``(processes x solver.ims_per_batch x solver.iter_size) / solver.reference_batch``."""
    s = cfg.solver
    total = s.ims_per_batch * s.iter_size * (comm.get_world_size() if world_size is None else world_size)
    return scale_lr(s.base_lr, total_batch=total, reference_batch=s.reference_batch), total


def warmup_iters(cfg: Any, lr: float) -> int:
    """``solver.warmup_iters``, or, when it is None, a warmup of :data:`AUTO_WARMUP_ITERS` (at most a
    tenth of ``max_iter``) if the linear scaling rule raised the rate above ``base_lr``, else none."""
    s = cfg.solver
    if s.warmup_iters is not None:
        return s.warmup_iters
    if lr > s.base_lr:
        n = max(1, min(AUTO_WARMUP_ITERS, s.max_iter // 10))
        logger.info("linear scaling raised the learning rate above solver.base_lr (%.6g -> %.6g): warming up "
                    "linearly over %d iterations from %g x (solver.warmup_iters=null; set it to 0 to disable)",
                    s.base_lr, lr, n, s.warmup_factor)
        return n
    return 0


def build_solver(cfg: Any, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum, weight decay) at the linearly scaled rate, and the per-iteration warmup + multi-step
    schedule. Logs the scaling it applied."""
    s = cfg.solver
    lr, total = scaled_lr(cfg)
    if total != s.reference_batch:
        logger.info("linear scaling rule: total batch %d (%d process(es) x %d images x iter_size %d) vs reference %d "
                    "-> lr %.6g x %d/%d = %.6g", total, comm.get_world_size(), s.ims_per_batch, s.iter_size,
                    s.reference_batch, s.base_lr, total, s.reference_batch, lr)
    else:
        logger.info("learning rate %.6g (total batch %d = solver.reference_batch, no scaling)", lr, total)
    optimizer = build_sgd(comm.unwrap_model(model), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay,
                          bias_lr_factor=s.bias_lr_factor, weight_decay_bias=s.weight_decay_bias)
    scheduler = build_warmup_multistep(optimizer, steps=s.steps, gamma=s.gamma, warmup_iters=warmup_iters(cfg, lr),
                                       warmup_factor=s.warmup_factor, warmup_method=s.warmup_method)
    return optimizer, scheduler


#: What a run writes into its output_dir (all of it goes with --overwrite).
RUN_FILES = ("model_*.pth", "model_*.pth.sha256", "last_checkpoint", "metrics.jsonl", "eval.json", "log.txt",
             "config.yaml", "events.out.tfevents.*", "*.tmp.*", "training_curves.png")
RUN_FOLDERS = ("results", "vis")


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Protect finished work: a fresh run refuses a folder that holds checkpoints unless ``overwrite``
    (which removes the earlier run's files first); ``resume`` removes temporary files left by a write that
    was killed. Rank 0 only."""
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: output_dir exists and is not a folder")
    checkpoints = sorted(p.name for p in out.glob("model_*.pth"))
    if resume:
        for tmp in out.glob("*.tmp.*"):
            logger.info("removing %s, left by a write that was interrupted", tmp)
            tmp.unlink()
        return
    if checkpoints and not overwrite:
        raise ValueError(f"{out}: holds the checkpoints of an earlier run ({', '.join(checkpoints[:3])}"
                         f"{', ...' if len(checkpoints) > 3 else ''}); pass --resume to continue it, --overwrite to "
                         "replace it, or choose another output_dir")
    if overwrite:
        for pattern in RUN_FILES:
            for p in out.glob(pattern):
                p.unlink()
        for name in RUN_FOLDERS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        if checkpoints:
            logger.warning("--overwrite: removed the earlier run's files from %s", out)


def start_run(cfg: Any, *, device: str | None, resume: bool = False, overwrite: bool = False) -> torch.device:
    """Join torchrun's process group (if any), check the output folder (see :func:`prepare_output_dir`), log
    to ``output_dir/log.txt`` on rank 0 and save the merged config there as ``config.yaml`` (loadable
    again). Returns this process's device."""
    dev = comm.init_distributed(device=device)
    main = comm.is_main_process()
    if main:
        prepare_output_dir(cfg.output_dir, resume=resume, overwrite=overwrite)
    comm.barrier()
    setup_logger(cfg.output_dir, main_process=main)
    if main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    logger.info("output_dir %s, %d process(es), device %s", cfg.output_dir, comm.get_world_size(), dev)
    return dev


def _solver_changes(cfg: Any, state: dict) -> dict[str, tuple[Any, Any]]:
    """``solver.<key>: (checkpoint's value, config's value)`` for every solver setting that differs."""
    old = (state.get("config") or {}).get("solver") or {}
    new = config_to_dict(cfg)["solver"]
    return {f"solver.{k}": (old[k], v) for k, v in new.items() if k in old and old[k] != v}


def _trim_metrics(output_dir: str, iteration: int) -> None:
    """Drop metrics.jsonl rows logged after ``iteration`` (by a run that went on past its last checkpoint)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if int(json.loads(line).get("iteration", 0)) <= iteration:
                kept.append(line)
        except (ValueError, AttributeError):  # a half-written last line: drop it
            continue
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
        logger.info("metrics.jsonl: removed %d row(s) logged after iteration %d", len(lines) - len(kept), iteration)


def _resume(trainer: Trainer, cfg: Any, device: torch.device, *, new_solver: bool) -> None:
    path = find_last_checkpoint(cfg.output_dir)
    if path is None:
        logger.info("--resume: no checkpoint in %s, starting from iteration 0", cfg.output_dir)
        return
    state = load_checkpoint(path, map_location=device)
    changes = _solver_changes(cfg, state)
    trainer.load_state_dict(state, source=path, keep_solver=not new_solver)
    trainer.last_checkpoint = path
    if comm.is_main_process():
        _trim_metrics(cfg.output_dir, trainer.start_iter)
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changes.items()))
        if new_solver:
            logger.warning("--new-solver: applying the config's solver settings from iteration %d: %s",
                           trainer.start_iter, listed)
        else:
            logger.warning("the config's solver settings differ from the checkpoint's (%s); the checkpoint's "
                           "learning rate and schedule continue. Pass --new-solver to apply the config's.", listed)
    logger.info("resumed from %s at iteration %d (lr %.6g)", path, trainer.start_iter,
                trainer.optimizer.param_groups[0]["lr"])


def run_training(cfg: Any, *, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
                 loader_factory: Callable[[int], Iterable], eval_fn: Callable[[nn.Module], dict] | None,
                 meta: dict, device: torch.device, resume: bool = False, new_solver: bool = False,
                 progress: bool = True, batch_size_fn: Callable[[Any], int] | None = None,
                 extra_state: dict | None = None) -> dict[str, Any]:
    """Train ``model`` (DDP-wrapped when distributed) with ``cfg.solver`` and the default hooks.

    Writes to ``cfg.output_dir``: metrics.jsonl and TensorBoard events (every ``solver.log_period``),
    checkpoints (every ``solver.checkpoint_period``, and ``model_final.pth``), eval.json (every
    ``test.eval_period`` and at the end). ``resume`` continues from the last checkpoint there (with the
    checkpoint's learning rate and schedule, or the config's with ``new_solver``).
    Returns ``{"iteration", "losses", "eval"}``.
    """
    optimizer, scheduler = build_solver(cfg, model)
    s = cfg.solver
    trainer = Trainer(model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                      loader_factory=loader_factory, max_iter=s.max_iter, device=device, amp=s.amp,
                      clip_grad_norm=s.clip_grad_norm, iter_size=s.iter_size, batch_size_fn=batch_size_fn)
    if resume:
        _resume(trainer, cfg, device, new_solver=new_solver)
    with MetricsWriter(cfg.output_dir, max_iter=s.max_iter, start_iter=trainer.start_iter,
                       enabled=comm.is_main_process(), progress=progress) as writer:
        hooks = [MetricsHook(writer, period=s.log_period),
                 CheckpointHook(cfg.output_dir, period=s.checkpoint_period, meta=meta, config=config_to_dict(cfg),
                                extra=extra_state)]
        if eval_fn is not None:
            hooks.append(EvalHook(eval_fn, period=cfg.test.eval_period, output_dir=cfg.output_dir, writer=writer))
        trainer.register_hooks(hooks)
        result = trainer.train()
    if comm.is_main_process():
        try:
            path = plot_training_curves(os.path.join(cfg.output_dir, "metrics.jsonl"),
                                        os.path.join(cfg.output_dir, "training_curves.png"))
            logger.info("drew the loss and mAP curves in %s", path)
        except ValueError as e:  # nothing logged (log_period 0): no picture
            logger.info("no training curves: %s", e)
    return result
