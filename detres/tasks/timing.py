"""The config side of the training-speed benchmarks (:mod:`detres.benchmarks.train`, ``scale``): what a
config's training step is made of, as plain values, so that the benchmarks time it without reading the config
(only ``detres/tasks/`` reads one). The optimiser is :func:`detres.tasks.common.build_solver`'s, the one
translation of ``cfg.solver``, so a timed step updates the parameters as a training run does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from detres.tasks import classification as cls_task
from detres.tasks import detection as det_task
from detres.tasks.common import build_solver

__all__ = ["DetStep", "ClsStep", "det_step", "cls_step", "config_summary"]


@dataclasses.dataclass
class DetStep:
    """A detection config's training step: ``model`` (train mode, on the device, random weights),
    ``optimizer`` (the config's SGD), images ``image_size`` (H, W) in pixels, ``ims_per_batch`` images of
    labels 1..``num_classes - 1`` (0 = background) per step, mixed precision ``amp`` ("bf16" | "fp16" | None)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    image_size: tuple[int, int]
    ims_per_batch: int
    num_classes: int
    amp: str | None
    backbone: str


@dataclasses.dataclass
class ClsStep:
    """A classification config's training step: ``model`` (train mode, on the device), ``optimizer``,
    ``crop`` x ``crop`` inputs, labels 0..``num_classes - 1``, ``amp``, and ``loss(model, (images, labels))``."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    crop: int
    num_classes: int
    amp: str | None
    loss: Callable[[nn.Module, Any], dict]


def det_step(cfg: Any, *, device: str | torch.device, image_size: tuple[int, int] | None = None) -> DetStep:
    """The detector of ``cfg`` (no weights) and its SGD; ``image_size`` (H, W) defaults to ``data.min_size`` x
    4:3 capped at ``data.max_size`` (the paper's 600x800)."""
    model = det_task.build_model(cfg, weights=None).to(torch.device(device)).train()
    optimizer, _ = build_solver(cfg, model)
    h, w = image_size or (cfg.data.min_size, min(cfg.data.max_size, round(cfg.data.min_size * 4 / 3)))
    return DetStep(model=model, optimizer=optimizer, image_size=(h, w), ims_per_batch=cfg.solver.ims_per_batch,
                   num_classes=det_task.num_classes_for(cfg), amp=cfg.solver.amp, backbone=cfg.model.backbone.name)


def cls_step(cfg: Any, *, device: str | torch.device) -> ClsStep:
    """The classifier of ``cfg`` and its SGD."""
    model = cls_task.build_model(cfg).to(torch.device(device)).train()
    optimizer, _ = build_solver(cfg, model)
    return ClsStep(model=model, optimizer=optimizer, crop=cfg.data.crop, num_classes=cfg.model.num_classes,
                   amp=cfg.solver.amp, loss=cls_task.classification_loss)


def config_summary(cfg: Any) -> dict[str, Any]:
    """The settings a timing report names: input sizes, backbone, batch."""
    return {"min_size": cfg.data.min_size, "max_size": cfg.data.max_size, "backbone": cfg.model.backbone.name,
            "ims_per_batch": cfg.solver.ims_per_batch, "iter_size": cfg.solver.iter_size}
