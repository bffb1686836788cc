"""What both tasks share: the solver read from ``cfg.solver`` and a training run with the default hooks.

Both schemas (:class:`~detres.config.DetConfig`, :class:`~detres.config.ClsConfig`) name these fields
alike: ``solver.{base_lr, momentum, weight_decay, ims_per_batch, reference_batch, steps, gamma,
warmup_iters, warmup_factor, max_iter, checkpoint_period, log_period, clip_grad_norm, amp}``,
``test.eval_period`` and ``output_dir``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

import torch
from torch import nn

from detres.config import config_to_dict, save_config
from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint
from detres.engine.hooks import CheckpointHook, EvalHook, MetricsHook
from detres.engine.logging import MetricsWriter, setup_logger
from detres.engine.solver import build_sgd, build_warmup_multistep, scale_lr
from detres.engine.trainer import Trainer
from detres.utils import comm

__all__ = ["scaled_lr", "warmup_iters", "build_solver", "start_run", "run_training", "AUTO_WARMUP_ITERS"]

logger = logging.getLogger("detres")


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
                                       warmup_factor=s.warmup_factor)
    return optimizer, scheduler


def start_run(cfg: Any, *, device: str | None) -> torch.device:
    """Join torchrun's process group (if any), log to ``output_dir/log.txt`` on rank 0 and save the merged
    config there as ``config.yaml`` (loadable again). Returns this process's device."""
    dev = comm.init_distributed(device=device)
    main = comm.is_main_process()
    setup_logger(cfg.output_dir, main_process=main)
    if main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    logger.info("output_dir %s, %d process(es), device %s", cfg.output_dir, comm.get_world_size(), dev)
    return dev


def _resume(trainer: Trainer, output_dir: str, device: torch.device) -> None:
    path = find_last_checkpoint(output_dir)
    if path is None:
        logger.info("--resume: no checkpoint in %s, starting from iteration 0", output_dir)
        return
    trainer.load_state_dict(load_checkpoint(path, map_location=device), source=path)
    trainer.last_checkpoint = path
    logger.info("resumed from %s at iteration %d (lr %.6g)", path, trainer.start_iter,
                trainer.optimizer.param_groups[0]["lr"])


def run_training(cfg: Any, *, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
                 loader_factory: Callable[[int], Iterable], eval_fn: Callable[[nn.Module], dict] | None,
                 meta: dict, device: torch.device, resume: bool = False, progress: bool = True,
                 batch_size_fn: Callable[[Any], int] | None = None) -> dict[str, Any]:
    """Train ``model`` (DDP-wrapped when distributed) with ``cfg.solver`` and the default hooks.

    Writes to ``cfg.output_dir``: metrics.jsonl and TensorBoard events (every ``solver.log_period``),
    checkpoints (every ``solver.checkpoint_period``, and ``model_final.pth``), eval.json (every
    ``test.eval_period`` and at the end). ``resume`` continues from the last checkpoint there.
    Returns ``{"iteration", "losses", "eval"}``.
    """
    optimizer, scheduler = build_solver(cfg, model)
    s = cfg.solver
    trainer = Trainer(model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                      loader_factory=loader_factory, max_iter=s.max_iter, device=device, amp=s.amp,
                      clip_grad_norm=s.clip_grad_norm, iter_size=s.iter_size, batch_size_fn=batch_size_fn)
    if resume:
        _resume(trainer, cfg.output_dir, device)
    with MetricsWriter(cfg.output_dir, max_iter=s.max_iter, start_iter=trainer.start_iter,
                       enabled=comm.is_main_process(), progress=progress) as writer:
        hooks = [MetricsHook(writer, period=s.log_period),
                 CheckpointHook(cfg.output_dir, period=s.checkpoint_period, meta=meta, config=config_to_dict(cfg))]
        if eval_fn is not None:
            hooks.append(EvalHook(eval_fn, period=cfg.test.eval_period, output_dir=cfg.output_dir, writer=writer))
        trainer.register_hooks(hooks)
        return trainer.train()
