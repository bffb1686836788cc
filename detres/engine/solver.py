"""Optimiser and learning-rate schedule: SGD with momentum, linear warmup then multi-step decay.

Two momentum conventions (``momentum_style``). PyTorch's SGD keeps a buffer of gradients, ``v = m v + g``, and
steps ``w -= lr v``; Caffe's SGDSolver (the solver of py-faster-rcnn and of the MSRA models) keeps the rate
inside the buffer, ``v = m v + lr g``, and steps ``w -= v`` (BVLC/caffe 9b89154
``src/caffe/solvers/sgd_solver.cpp:232-234``: ``history = local_rate * diff + momentum * history``). At a
constant rate the two give the same weights (``v_caffe = lr v_pytorch``); after a rate step, PyTorch's buffer
applies the new rate to the whole history at once, Caffe's lets the old rate's history decay over ~1/(1-m)
iterations (10 at m = 0.9). ``g`` includes the weight decay ``wd w`` in both.

The schedule is iteration based (the unit of py-faster-rcnn's and Detectron's solvers). The base learning
rate follows the linear scaling rule (Goyal et al. 2017): when the total batch (processes x images per
process) differs from the batch the rate was tuned for, the rate is multiplied by their ratio. (The other rule,
accumulating passes up to that batch with the rate kept, is :func:`detres.tasks.common.resolve_batch`'s.)

No argument has a default here: the values come from the config's ``solver`` section, translated once by
:func:`detres.tasks.common.build_solver` (its defaults live in :mod:`detres.config`).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = ["MOMENTUM_STYLES", "scale_lr", "build_sgd", "CaffeSGD", "WarmupMultiStep", "build_warmup_multistep"]

#: ``solver.momentum_style`` values: where the learning rate sits in the momentum update.
MOMENTUM_STYLES = ("pytorch", "caffe")


def scale_lr(base_lr: float, *, total_batch: int, reference_batch: int) -> float:
    """Linear scaling rule: ``base_lr * total_batch / reference_batch``."""
    if total_batch <= 0 or reference_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got total={total_batch}, reference={reference_batch}")
    return base_lr * total_batch / reference_batch


def build_sgd(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
              bias_lr_factor: float, weight_decay_bias: float | None, momentum_style: str) -> torch.optim.SGD:
    """SGD over the trainable parameters (``requires_grad``) of ``model``; frozen ones are left out.

    Parameters named ``bias`` form a second group with the rate ``lr * bias_lr_factor`` and the weight
    decay ``weight_decay_bias`` (None: ``weight_decay``), as Caffe's ``lr_mult``/``decay_mult`` (py-faster-rcnn
    trains biases at twice the rate, with the weights' decay: its prototxts set ``decay_mult: 0`` only on the
    frozen conv1_x/conv2_x, models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt lines 22-112). The
    weights are group 0. ``momentum_style``: "pytorch" (``torch.optim.SGD``) or
    "caffe" (:class:`CaffeSGD`, see the module docstring).
    """
    if lr < 0 or bias_lr_factor < 0 or weight_decay < 0 or (weight_decay_bias is not None and weight_decay_bias < 0):
        raise ValueError(f"learning rates and weight decays must be >= 0, got lr={lr}, bias_lr_factor={bias_lr_factor}, "
                         f"weight_decay={weight_decay}, weight_decay_bias={weight_decay_bias}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    is_bias = [n.rsplit(".", 1)[-1] == "bias" for n, _ in named]
    weights = [p for (_, p), b in zip(named, is_bias) if not b]
    biases = [p for (_, p), b in zip(named, is_bias) if b]
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}] if weights else []
    if biases:
        groups.append({"params": biases, "lr": lr * bias_lr_factor,
                       "weight_decay": weight_decay if weight_decay_bias is None else weight_decay_bias})
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    sgd = CaffeSGD if momentum_style == "caffe" else torch.optim.SGD
    return sgd(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


class CaffeSGD(torch.optim.SGD):
    """SGD with Caffe's momentum: ``v = m v + lr (g + wd w)``, ``w -= v`` (the rate inside the buffer).

    The state (``momentum_buffer`` per parameter) and the param groups are SGD's, so checkpoints, schedulers
    and resuming work unchanged; only the update differs (module docstring). No Nesterov, no dampening.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            d = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads  # g + wd w
            bufs = []
            for p, dp in zip(params, d):
                state = self.state[p]
                if "momentum_buffer" not in state:  # Caffe's history starts at zero: v = 0 * m + lr d
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, d, alpha=lr)
            torch._foreach_sub_(params, bufs)
        return loss


class WarmupMultiStep:
    """LR multiplier at iteration ``it``: linear warmup from ``warmup_factor`` to 1, then ``gamma**k``.

    A plain callable object (not a lambda) so LambdaLR can save and restore it in its state dict.
    """

    def __init__(self, *, steps: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float,
                 warmup_method: str) -> None:
        steps = list(steps)
        if steps != sorted(steps):
            raise ValueError(f"solver.steps must be increasing, got {steps}")
        self.steps = steps
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
        self.warmup_method = warmup_method

    def __call__(self, it: int) -> float:
        factor = self.gamma ** bisect_right(self.steps, it)
        if it < self.warmup_iters:
            if self.warmup_method == "constant":  # ResNet-110 on CIFAR: 0.1 x the rate, then the full rate
                return factor * self.warmup_factor
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_warmup_multistep(optimizer: torch.optim.Optimizer, *, steps: Iterable[int], gamma: float,
                           warmup_iters: int, warmup_factor: float, warmup_method: str
                           ) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepping once per iteration with :class:`WarmupMultiStep`."""
    fn = WarmupMultiStep(steps=list(steps), gamma=gamma, warmup_iters=warmup_iters, warmup_factor=warmup_factor,
                         warmup_method=warmup_method)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
