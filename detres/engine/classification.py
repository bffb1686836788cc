"""ImageNet pretraining on the shared engine: builds what :func:`detres.engine.trainer.train` needs.

Everything task-specific lives here (the classifier, the ImageNet loaders, the cross-entropy loss, the
centre-crop / 10-crop evaluation and the weights meta); the loop, checkpoints, logging, AMP and
torchrun support are the engine's, the same as for detection.

The checkpoints the loop writes are ``{"model": classifier state dict (torchvision keys), "meta":
cls_meta(cfg), ...}``, so ``model_final.pth`` is directly a ``model.backbone.weights`` for detection:
the meta says the network saw RGB in [0, 1] normalised by the mean/std used here, and its style.
"""
from __future__ import annotations

import logging
import os
import statistics
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detres.backbones import build_classifier
from detres.config import ClsConfig, load_config, save_config, config_to_dict
from detres.data.imagenet import (ImageNetFolder, build_test_loader, build_test_transform,
                                  build_train_loader_factory, build_train_transform)
from detres.engine import distributed as du
from detres.engine.logging import setup_logger
from detres.engine.solver import build_sgd, build_warmup_multistep, scale_lr
from detres.engine.trainer import seed_all, time_sgd_steps, train
from detres.evaluation.classification import evaluate_classifier

__all__ = [
    "classification_loss_fn", "cls_meta", "cls_mean_std", "imagenet_root", "build_cls_model",
    "build_cls_datasets", "build_cls_eval_fn", "build_cls_solver", "effective_amp", "run_classification",
    "time_train_step",
]

logger = logging.getLogger("detres")


def classification_loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy of ``model(images [N,3,H,W]) -> logits [N,C]`` against ``labels [N]`` (int64)."""
    images, labels = batch
    device = next(model.parameters()).device
    logits = model(images.to(device, non_blocking=True))
    return {"loss_cls": F.cross_entropy(logits.float(), torch.as_tensor(labels).to(device, non_blocking=True))}


def cls_mean_std(cfg: ClsConfig) -> tuple[list[float], list[float]]:
    """Normalisation of the training inputs (RGB, [0, 1]): ``cfg.data.mean`` / ``cfg.data.std``."""
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3 or min(cfg.data.std) <= 0:
        raise ValueError(f"data.mean and data.std need 3 values (std > 0), got {cfg.data.mean} / {cfg.data.std}")
    return [float(m) for m in cfg.data.mean], [float(s) for s in cfg.data.std]


def cls_meta(cfg: ClsConfig) -> dict[str, Any]:
    """The weights meta of a classifier trained with ``cfg``: what detection must feed it."""
    mean, std = cls_mean_std(cfg)
    return {
        "style": cfg.model.style if cfg.model.name != "vgg16" else "pytorch",
        "channel_order": "RGB",
        "input_range": 1.0,
        "mean": mean,
        "std": std,
        "bn_eps": 1e-5,  # nn.BatchNorm2d's default, which build_classifier uses when training from scratch
        "arch": cfg.model.name,
        "source": "detres-imagenet",
    }


def imagenet_root(cfg: ClsConfig) -> str:
    """``cfg.data.root``, else ``$DETRES_DATA/imagenet``, else ``./data/imagenet``."""
    if cfg.data.root:
        return cfg.data.root
    base = os.environ.get("DETRES_DATA", "data")
    return os.path.join(base, "imagenet")


def build_cls_model(cfg: ClsConfig) -> nn.Module:
    """``build_classifier`` from ``cfg.model`` (randomly initialised, BN trained)."""
    m = cfg.model
    return build_classifier(m.name, num_classes=m.num_classes, style=m.style, norm=m.norm, shortcut=m.shortcut)


def build_cls_datasets(cfg: ClsConfig, *, train: bool = True, test: bool = True
                       ) -> tuple[ImageNetFolder | None, ImageNetFolder | None]:
    """(train set with the paper's augmentation, val set with 10-crop or centre-crop views)."""
    root = imagenet_root(cfg)
    d = cfg.data
    mean, std = cls_mean_std(cfg)
    train_dir = os.path.join(root, d.train_dir)
    train_set = val_set = None
    classes = None
    if train:
        train_set = ImageNetFolder(train_dir, transform=build_train_transform(
            min_scale=d.min_scale, max_scale=d.max_scale, crop=d.crop, lighting=d.pca_lighting, mean=mean, std=std))
        classes = train_set.classes
        if len(classes) != cfg.model.num_classes:
            raise ValueError(f"{train_dir}: {len(classes)} class folders but model.num_classes={cfg.model.num_classes}")
    if test:
        if classes is None and os.path.isdir(train_dir):
            classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
        val_set = ImageNetFolder(os.path.join(root, d.val_dir), classes=classes, transform=build_test_transform(
            resize=d.test_resize, crop=d.crop, ten_crop=cfg.test.ten_crop, mean=mean, std=std))
    return train_set, val_set


def effective_amp(cfg: ClsConfig, device: torch.device) -> str | None:
    """``cfg.solver.amp`` on CUDA; None elsewhere (mixed precision is for GPUs)."""
    if cfg.solver.amp and device.type != "cuda":
        logger.info("solver.amp=%s ignored on %s: mixed precision is used on CUDA only", cfg.solver.amp, device.type)
        return None
    return cfg.solver.amp


def build_cls_eval_fn(cfg: ClsConfig, val_set: ImageNetFolder, *, device: torch.device, amp: str | None
                      ) -> Callable[[nn.Module], dict]:
    """``f(model) -> {"top1_error_center", "top5_error_center", "top1_error_10crop", ..., "num_images"}``."""
    loader = build_test_loader(val_set, batch_size=cfg.test.ims_per_batch, num_workers=cfg.data.num_workers,
                               rank=du.get_rank(), world_size=du.get_world_size(), pin_memory=device.type == "cuda")

    def eval_fn(model: nn.Module) -> dict:
        return evaluate_classifier(model, loader, device=device, amp=amp)

    return eval_fn


def build_cls_solver(cfg: ClsConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """SGD (momentum, weight decay on all weights) at the linearly scaled lr, and the step schedule."""
    s = cfg.solver
    lr = scale_lr(s.base_lr, total_batch=s.ims_per_batch * du.get_world_size(), reference_batch=s.reference_batch)
    optimizer = build_sgd(model, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    scheduler = build_warmup_multistep(optimizer, steps=s.steps, gamma=s.gamma, warmup_iters=s.warmup_iters,
                                       warmup_factor=s.warmup_factor)
    return optimizer, scheduler


def run_classification(cfg: ClsConfig, *, resume: bool = False, device: str | None = None,
                       progress: bool = True) -> dict:
    """Train ``cfg`` (torchrun-aware) and evaluate; returns the engine's ``{"iteration", "losses", "eval"}``.

    Writes to ``cfg.output_dir``: config.yaml, log.txt, metrics.jsonl, TensorBoard events, checkpoints,
    model_final.pth (a valid detection ``weights=``) and eval.json.
    """
    if cfg.task != "classification":
        raise ValueError(f"config task is {cfg.task!r}; tools/train_cls.py needs task: classification")
    dev = du.init_distributed(device=device)
    main = du.is_main_process()
    setup_logger(cfg.output_dir, main_process=main)
    seed_all(cfg.seed + du.get_rank())
    if main:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    train_set, val_set = build_cls_datasets(cfg)
    model = build_cls_model(cfg).to(dev)
    if du.is_distributed() and cfg.model.norm == "syncbn":
        model = du.convert_sync_bn(model)
    optimizer, scheduler = build_cls_solver(cfg, model)
    amp = effective_amp(cfg, dev)
    logger.info("classification: %s (%s), %d train / %d val images, %d classes, lr %.4g, batch %d x %d",
                cfg.model.name, cfg.model.style, len(train_set), len(val_set), len(train_set.classes),
                optimizer.param_groups[0]["lr"], cfg.solver.ims_per_batch, du.get_world_size())
    wrapped = du.wrap_model(model, dev)
    factory = build_train_loader_factory(train_set, batch_size=cfg.solver.ims_per_batch,
                                         num_workers=cfg.data.num_workers, seed=cfg.seed, rank=du.get_rank(),
                                         world_size=du.get_world_size(), pin_memory=dev.type == "cuda")
    return train(model=wrapped, loss_fn=classification_loss_fn, optimizer=optimizer, scheduler=scheduler,
                 train_loader_factory=factory, max_iter=cfg.solver.max_iter, output_dir=cfg.output_dir,
                 checkpoint_period=cfg.solver.checkpoint_period, eval_period=cfg.test.eval_period,
                 eval_fn=build_cls_eval_fn(cfg, val_set, device=dev, amp=amp), amp=amp,
                 clip_grad_norm=cfg.solver.clip_grad_norm, log_period=cfg.solver.log_period, meta=cls_meta(cfg),
                 config_dict=config_to_dict(cfg), resume=resume, device=dev, progress=progress)


def time_train_step(config: str | ClsConfig, *, overrides: Sequence[str] = (), batch_size: int = 2,
                    steps: int = 3, warmup: int = 1, device: str = "cpu") -> dict[str, float]:
    """Seconds per training iteration (forward, backward, SGD step) of a config's classifier.

    Synthetic inputs ``[batch_size, 3, crop, crop]`` and random labels stand in for data, so only the
    model is timed. Returns ``{"median_s", "min_s", "batch_size", "crop", "params_m"}``.
    """
    cfg = load_config(config, list(overrides)) if isinstance(config, (str, os.PathLike)) else config
    dev = torch.device(device)
    model = build_cls_model(cfg).to(dev).train()
    optimizer, _ = build_cls_solver(cfg, model)
    amp = effective_amp(cfg, dev)
    crop = cfg.data.crop
    images = torch.randn(batch_size, 3, crop, crop, device=dev)
    labels = torch.randint(0, cfg.model.num_classes, (batch_size,), device=dev)
    times = time_sgd_steps(lambda b: classification_loss_fn(model, b)["loss_cls"], lambda: (images, labels), optimizer,
                           iters=steps, warmup=warmup, device=dev, amp=amp)
    return {"median_s": statistics.median(times), "min_s": min(times), "batch_size": batch_size, "crop": crop,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
