"""ImageNet pretraining: the only code that reads a :class:`~detres.config.ClsConfig`.

The classifier, the data sets (ImageNet, CIFAR-10, digits) on detection's loaders, the cross-entropy loss,
the centre-crop / 10-crop / multi-scale evaluation, the optional per-pixel mean image, the rate set from the
training error (plateau drops, a warmup until an error), Appendix A's BN recomputation and
the weights meta are wired here; the loop, checkpoints, logging, AMP and torchrun support are the
engine's, the same as for detection (:func:`detres.tasks.common.run_training`).

The checkpoints are ``{"model": classifier state dict (torchvision keys), "meta": cls_meta(cfg), ...}``,
so ``model_final.pth`` is directly a ``model.backbone.weights`` for detection: the meta says the network
saw RGB in [0, 1] normalised by the mean/std used here, and its style.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from detres.backbones import NORMS, SHORTCUTS, STYLES, build_classifier, has_style, list_classifiers
from detres.config import ClsConfig
from detres.data.cifar import CIFAR10
from detres.data.cifar import digits as cifar_digits
from detres.data.imagenet import ImageNetFolder, MultiScaleViews, list_collate, sum_images
from detres.data.loader import build_test_loader, build_train_loader, stack_collate
from detres.data.transforms import build_cls_test_transform, build_cls_train_transform
from detres.engine.hooks import ErrorDrivenLR
from detres.evaluation.classification import evaluate_classifier, evaluate_multi_scale
from detres.tasks.common import check_choice, run_training, start_run
from detres.utils import comm
from detres.utils.io import data_root
from detres.utils.rng import seed_all

__all__ = ["classification_loss", "cls_mean_std", "cls_meta", "imagenet_root", "build_model", "build_datasets",
           "build_train_loader_factory", "build_eval_fn", "build_lr_hooks", "build_multi_scale_set",
           "compute_mean_image", "weights_mean_image", "run_eval", "run_train", "bn_sample", "recompute_bn"]

logger = logging.getLogger("detres")


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy of ``model(images [N,3,H,W]) -> logits [N,C]`` against ``labels [N]`` (int64), and the
    batch's top-1 error as ``train_error`` (logged, not optimised: the training curves of Fig. 6)."""
    images, labels = batch
    device = next(model.parameters()).device
    logits = model(images.to(device, non_blocking=True))
    labels = torch.as_tensor(labels).to(device, non_blocking=True)
    error = (logits.detach().argmax(dim=1) != labels).float().mean()
    return {"loss_cls": F.cross_entropy(logits.float(), labels), "train_error": error}


def cls_mean_std(cfg: ClsConfig) -> tuple[list[float], list[float]]:
    """Normalisation of the training inputs (RGB, [0, 1]): ``data.mean`` / ``data.std``."""
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3 or min(cfg.data.std) <= 0:
        raise ValueError(f"data.mean and data.std need 3 values (std > 0), got {cfg.data.mean} / {cfg.data.std}")
    return [float(m) for m in cfg.data.mean], [float(s) for s in cfg.data.std]


def cls_meta(cfg: ClsConfig, mean_image: torch.Tensor | None = None) -> dict[str, Any]:
    """The weights meta of a classifier trained with ``cfg``: what detection must feed it. With a per-pixel
    ``mean_image`` ([3, crop, crop], ``data.mean_image``) the meta's ``mean`` is its per-channel mean (what a
    detector of any image size subtracts) and ``mean_image`` describes the image, which the checkpoint holds
    beside the meta under the key ``mean_image``."""
    mean, std = cls_mean_std(cfg)
    extra: dict[str, Any] = {}
    if mean_image is not None:
        mean = [float(v) for v in mean_image.double().mean(dim=(1, 2))]
        extra["mean_image"] = {"shape": list(mean_image.shape), "checkpoint_key": "mean_image"}
    return {
        "style": cfg.model.style if has_style(cfg.model.name) else "pytorch",
        "channel_order": "RGB",
        "input_range": 1.0,
        "mean": mean,
        "std": std,
        "bn_eps": 1e-5,  # nn.BatchNorm2d's default, which build_classifier uses when training from scratch
        "arch": cfg.model.name,
        "source": "detres-imagenet",
        **extra,
    }


#: ``data.dataset`` choices of the classification task.
CLS_DATASETS = ("imagenet", "cifar10", "digits")


def imagenet_root(cfg: ClsConfig) -> Path:
    """``data.root``, else ``$DETRES_DATA/<data.dataset>``, else ``./data/<data.dataset>``."""
    return Path(cfg.data.root) if cfg.data.root else data_root() / cfg.data.dataset


def build_model(cfg: ClsConfig) -> nn.Module:
    """``build_classifier`` from ``cfg.model`` (randomly initialised, BN trained). ``model.caffe_stem_pool``:
    the MSRA Caffe pool1 (ResNets; VGG-16 and the CIFAR nets ignore it), the grid of detection's
    ``model.backbone.caffe_stem_pool: true``, so that the weights trained here see there what they saw here."""
    m = cfg.model
    check_choice("model.name", m.name, list_classifiers())
    check_choice("model.norm", m.norm, NORMS)
    check_choice("model.style", m.style, STYLES)
    check_choice("model.shortcut", m.shortcut, SHORTCUTS)
    return build_classifier(m.name, num_classes=m.num_classes, style=m.style, norm=m.norm, shortcut=m.shortcut,
                            width=m.width, caffe_stem_pool=m.caffe_stem_pool)


def compute_mean_image(cfg: ClsConfig) -> torch.Tensor:
    """The per-pixel mean image ``float32 [3, crop, crop]`` (RGB in [0, 1]) of the ImageNet training images
    (``data.mean_image_samples`` of them drawn with ``seed``, or all), each seen as the test's centre view
    (shorter side ``data.test_resize``, centre ``data.crop`` crop). Shared over the ranks (each sums a slice)."""
    d = cfg.data
    if d.dataset != "imagenet":
        raise ValueError(f"config key 'data.mean_image': for ImageNet folders (CIFAR-10 always subtracts its mean "
                         f"image), not data.dataset={d.dataset!r}")
    folder = ImageNetFolder(imagenet_root(cfg) / d.train_dir, transform=build_cls_test_transform(
        resize=d.test_resize, crop=d.crop, ten_crop=False, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]))
    n = len(folder) if d.mean_image_samples == 0 else min(d.mean_image_samples, len(folder))
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(cfg.seed))[:n].sort().values
    loader = build_test_loader(torch.utils.data.Subset(folder, order.tolist()), batch_size=cfg.test.ims_per_batch,
                               num_workers=d.num_workers, rank=comm.get_rank(), world_size=comm.get_world_size(),
                               collate_fn=stack_collate)
    total, count = sum_images(loader) if len(order) else (torch.zeros(3, d.crop, d.crop, dtype=torch.float64), 0)
    parts = comm.all_reduce_sum(torch.cat([total.flatten(), torch.tensor([float(count)], dtype=torch.float64)]))
    logger.info("mean image: %d training images at %dx%d", int(parts[-1]), d.crop, d.crop)
    return (parts[:-1] / parts[-1]).view(3, d.crop, d.crop).float()


def weights_mean_image(cfg: ClsConfig, weights: str | Path) -> torch.Tensor | None:
    """The mean image stored in the checkpoint ``weights`` when ``data.mean_image`` is on (None when off);
    ValueError naming the file when it holds none."""
    if not cfg.data.mean_image:
        return None
    from detres.engine.checkpoint import load_checkpoint

    image = load_checkpoint(str(weights), verify=False).get("mean_image")
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != (3, cfg.data.crop, cfg.data.crop):
        raise ValueError(f"{weights}: data.mean_image is on but the file holds no mean image of 3x{cfg.data.crop}x"
                         f"{cfg.data.crop} (train with data.mean_image: true, or set it to false)")
    return image.float()


def build_datasets(cfg: ClsConfig, *, train: bool = True, test: bool = True,
                   mean_image: torch.Tensor | None = None) -> tuple[Any, Any]:
    """(train set with the paper's augmentation, evaluation set): ImageNet folders (10-crop or centre-crop
    views), CIFAR-10 files (Sec. 4.2: per-pixel mean, 4-px padding + crop + flip; the test set or a held-out
    ``data.val_size``), or scikit-learn's digits. With ``data.mean_image`` the ImageNet views have the
    per-pixel ``mean_image`` subtracted instead of ``data.mean`` (computed here when not given)."""
    kind = check_choice("data.dataset", cfg.data.dataset, CLS_DATASETS)
    if kind in ("cifar10", "digits"):
        train_set, eval_set = (CIFAR10.build(imagenet_root(cfg), val_size=cfg.data.val_size, seed=cfg.seed,
                                             padding=cfg.data.padding) if kind == "cifar10"
                               else cifar_digits(seed=cfg.seed))
        if len(train_set.classes) != cfg.model.num_classes:
            raise ValueError(f"config key 'model.num_classes': {cfg.model.num_classes}, but {kind} has "
                             f"{len(train_set.classes)} classes")
        return (train_set if train else None), (eval_set if test else None)
    root = imagenet_root(cfg)
    d = cfg.data
    mean, std = cls_mean_std(cfg)
    subtract = None
    if d.mean_image:
        mean_image = compute_mean_image(cfg) if mean_image is None else mean_image
        subtract, mean = mean_image / torch.tensor(std).view(3, 1, 1), [0.0, 0.0, 0.0]
    train_dir = root / d.train_dir
    train_set = val_set = None
    classes = None
    if train:
        train_set = ImageNetFolder(train_dir, transform=build_cls_train_transform(
            min_scale=d.min_scale, max_scale=d.max_scale, crop=d.crop, lighting=d.pca_lighting, mean=mean, std=std),
            subtract=subtract)
        classes = train_set.classes
        if len(classes) != cfg.model.num_classes:
            raise ValueError(f"{train_dir}: {len(classes)} class folders but model.num_classes={cfg.model.num_classes}")
    if test:
        if classes is None and train_dir.is_dir():
            classes = sorted(e.name for e in train_dir.iterdir() if e.is_dir())
        val_set = ImageNetFolder(root / d.val_dir, classes=classes, transform=build_cls_test_transform(
            resize=d.test_resize, crop=d.crop, ten_crop=cfg.test.ten_crop, mean=mean, std=std), subtract=subtract)
    return train_set, val_set


def build_train_loader_factory(cfg: ClsConfig, train_set: Any, *, pin_memory: bool = False
                               ) -> Callable[[int], Any]:
    """``f(start_iter)`` -> infinite iterator of ``(images [B, 3, crop, crop], labels [B])`` batches: detection's
    loader (per-item seeded augmentation, resumable at ``start_iter``), one aspect-ratio group."""
    def factory(start_iter: int) -> Any:
        return build_train_loader(train_set, images_per_batch=cfg.solver.ims_per_batch,
                                  num_workers=cfg.data.num_workers, seed=cfg.seed, start_iter=start_iter,
                                  aspect_ratio_grouping=False, collate_fn=stack_collate, pin_memory=pin_memory)
    return factory


def build_multi_scale_set(cfg: ClsConfig, classes: list[str], mean_image: torch.Tensor | None = None
                          ) -> ImageNetFolder | None:
    """The validation images as :class:`~detres.data.imagenet.MultiScaleViews` at ``test.multi_scale`` (the
    fully-convolutional test of Sec. 3.4), or None when that list is empty. ImageNet folders only. Images of
    any size cannot take a per-pixel mean image: with ``mean_image`` its per-channel mean is subtracted."""
    scales = list(cfg.test.multi_scale)
    if not scales:
        return None
    if cfg.data.dataset != "imagenet":
        raise ValueError(f"config key 'test.multi_scale': the multi-scale test is for ImageNet folders, not "
                         f"data.dataset={cfg.data.dataset!r}; set it to []")
    bad = [s for s in scales if not 1 <= s <= 16384]
    if bad or len(set(scales)) != len(scales):
        raise ValueError(f"config key 'test.multi_scale': must be distinct shorter sides in [1, 16384] pixels, "
                         f"got {scales}")
    mean, std = cls_mean_std(cfg)
    if mean_image is not None:
        mean = [float(v) for v in mean_image.double().mean(dim=(1, 2))]
    return ImageNetFolder(imagenet_root(cfg) / cfg.data.val_dir, classes=classes,
                          transform=MultiScaleViews(scales, mean=mean, std=std))


def build_eval_fn(cfg: ClsConfig, val_set: Any, *, device: torch.device, mean_image: torch.Tensor | None = None
                  ) -> Callable[[nn.Module], dict]:
    """``f(model) -> {"top1_error_center", "top5_error_center", "top1_error_10crop", ..., "num_images"}``, plus
    ``top{1,5}_error_multiscale`` when ``test.multi_scale`` lists scales (the fully-convolutional test)."""
    loader = build_test_loader(val_set, batch_size=cfg.test.ims_per_batch, num_workers=cfg.data.num_workers,
                               rank=comm.get_rank(), world_size=comm.get_world_size(), collate_fn=stack_collate,
                               pin_memory=device.type == "cuda")
    ms_set = build_multi_scale_set(cfg, list(val_set.classes), mean_image) if cfg.test.multi_scale else None
    ms_loader = None if ms_set is None else build_test_loader(
        ms_set, batch_size=cfg.test.ims_per_batch, num_workers=cfg.data.num_workers, rank=comm.get_rank(),
        world_size=comm.get_world_size(), collate_fn=list_collate)

    def evaluate(model: nn.Module) -> dict:
        out = evaluate_classifier(model, loader, device=device, amp=cfg.solver.amp)
        if ms_loader is not None:
            ms = evaluate_multi_scale(model, ms_loader, device=device, amp=cfg.solver.amp,
                                      flip=cfg.test.multi_scale_flip)
            out.update({k: v for k, v in ms.items() if k != "num_images"})
        return out
    return evaluate


def run_eval(cfg: ClsConfig, weights: str, *, device: str | None = None) -> dict:
    """Evaluate the classifier in ``weights`` (a checkpoint of :func:`run_train` or any ``{"model", "meta"}``
    file of ``model.name``) on the validation set with the config's test protocol (centre crop, 10-crop,
    ``test.multi_scale``); returns the errors. Writes nothing."""
    from detres.backbones import read_weights
    from detres.utils.cli import check_device

    dev = torch.device(check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    state, _ = read_weights(weights)
    mean_image = weights_mean_image(cfg, weights)
    _, val_set = build_datasets(cfg, train=False, mean_image=mean_image)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: does not fit model.name={cfg.model.name} (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return build_eval_fn(cfg, val_set, device=dev, mean_image=mean_image)(model.to(dev))


#: ``solver.lr_schedule`` choices.
LR_SCHEDULES = ("steps", "plateau")


def build_lr_hooks(cfg: ClsConfig) -> list[ErrorDrivenLR]:
    """The hook that sets the rate from the training error, when the config asks for one:
    ``solver.lr_schedule: plateau`` (Sec. 3.4) and/or ``solver.warmup_until_error`` (Sec. 4.2); else none.
    Refuses settings that would also drop or warm up by iteration count."""
    s = cfg.solver
    plateau = check_choice("solver.lr_schedule", s.lr_schedule, LR_SCHEDULES) == "plateau"
    if plateau and s.steps:
        raise ValueError(f"config key 'solver.steps': must be [] with solver.lr_schedule: plateau (the rate drops when "
                         f"the training error plateaus, not at fixed iterations), got {s.steps}")
    if s.warmup_until_error is not None and s.warmup_iters:
        raise ValueError(f"config key 'solver.warmup_iters': must be 0 with solver.warmup_until_error (the warmup "
                         f"lasts until the training error is below it), got {s.warmup_iters}")
    if not plateau and s.warmup_until_error is None:
        return []
    return [ErrorDrivenLR(window=s.error_window, warmup_until_error=s.warmup_until_error,
                          warmup_factor=s.warmup_factor, plateau=plateau, gamma=s.gamma,
                          plateau_patience=s.plateau_patience, plateau_threshold=s.plateau_threshold)]


def run_train(cfg: ClsConfig, *, resume: bool = False, overwrite: bool = False, new_solver: bool = False,
              device: str | None = None, progress: bool = True) -> dict:
    """Train ``cfg`` (torchrun-aware) and evaluate; returns ``{"iteration", "losses", "eval"}``.

    Writes to ``output_dir``: config.yaml, log.txt, metrics.jsonl, TensorBoard events, checkpoints,
    model_final.pth (a valid detection ``weights=``) and eval.json.
    """
    if cfg.task != "classification":
        raise ValueError(f"config task is {cfg.task!r}; tools/train_cls.py needs task: classification")
    lr_hooks = build_lr_hooks(cfg)
    dev = start_run(cfg, device=device, resume=resume, overwrite=overwrite)
    seed_all(cfg.seed + comm.get_rank())
    mean_image = compute_mean_image(cfg) if cfg.data.mean_image else None
    train_set, val_set = build_datasets(cfg, mean_image=mean_image)
    model = build_model(cfg).to(dev)
    if comm.is_distributed() and cfg.model.norm == "syncbn":
        model = comm.convert_sync_bn(model)
    logger.info("classification: %s (%s), %d train / %d val images, %d classes, batch %d x %d",
                cfg.model.name, cfg.model.style, len(train_set), len(val_set), len(train_set.classes),
                cfg.solver.ims_per_batch, comm.get_world_size())
    return run_training(cfg, model=comm.wrap_model(model, dev), loss_fn=classification_loss,
                        loader_factory=build_train_loader_factory(cfg, train_set, pin_memory=dev.type == "cuda"),
                        eval_fn=build_eval_fn(cfg, val_set, device=dev, mean_image=mean_image),
                        meta=cls_meta(cfg, mean_image), device=dev,
                        resume=resume, new_solver=new_solver, progress=progress,
                        extra_state={"class_names": list(train_set.classes),
                                     **({} if mean_image is None else {"mean_image": mean_image})},
                        extra_hooks=lr_hooks)


def bn_sample(cfg: ClsConfig, num_images: int | None, size: int) -> list[tuple[int, int]]:
    """``[(index, seed), ...]``: the ``num_images`` training items (of ``size``; None: all of them, Appendix A's
    "training set") whose BN statistics :func:`recompute_bn` measures: the first of a permutation drawn from
    ``cfg.seed``, each augmented as in training with its own seed (``cfg.seed + index``)."""
    num_images = size if num_images is None else num_images
    if not 1 <= num_images <= size:
        raise ValueError(f"--num-images must be in [1, {size}] (the training set's size), got {num_images}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(cfg.seed))[:num_images]
    return [(int(i), cfg.seed + int(i)) for i in order]


def recompute_bn(cfg: ClsConfig, weights: str, output: str, *, num_images: int | None, batch_size: int | None = None,
                 device: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Appendix A of He et al. (2015): before a classifier is used for detection, its BN statistics are
    recomputed on the training set (the running averages of training lag the final weights).

    Loads ``weights`` (a checkpoint of :func:`run_train`: ``{"model", "meta"}``) into ``build_model(cfg)``,
    resets every BatchNorm's running mean and variance, and measures them again as the exact average over
    ``num_images`` training images (:func:`bn_sample`; None: the whole training set) in batches of ``batch_size`` (default
    ``solver.ims_per_batch``; each batch's mean and unbiased variance, averaged over the batches: torch's
    ``swa_utils.update_bn``). Only the BN buffers change. Writes ``{"model", "meta"}`` to ``output``
    (atomically; the meta gains ``bn_recomputed: {"num_images", "from"}``) and returns a summary.
    """
    from torch.optim.swa_utils import update_bn

    from detres.backbones import read_weights
    from detres.engine.checkpoint import save_checkpoint
    from detres.utils.cli import check_device

    if Path(output).exists() and not overwrite:
        raise ValueError(f"{output} exists; pass --overwrite to replace it")
    if Path(output).resolve() == Path(weights).resolve():
        raise ValueError(f"--output {output} is the input weights file; write the new statistics to another file")
    batch_size = cfg.solver.ims_per_batch if batch_size is None else batch_size
    if batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (a variance needs two images), got {batch_size}")
    state, meta = read_weights(weights)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: does not fit model.name={cfg.model.name} (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError(f"model.name={cfg.model.name} (norm {cfg.model.norm}) has no BatchNorm layer")
    dev = torch.device(check_device(device) or "cpu")
    model.to(dev)
    mean_image = weights_mean_image(cfg, weights)
    train_set, _ = build_datasets(cfg, test=False, mean_image=mean_image)
    chosen = bn_sample(cfg, num_images, len(train_set))

    def batches():
        for start in range(0, len(chosen), batch_size):
            items = [train_set.get(i, seed=seed)[0] for i, seed in chosen[start:start + batch_size]]
            yield torch.stack(items).to(dev)

    update_bn(batches(), model, device=None)
    meta = dict(meta, bn_recomputed={"num_images": len(chosen), "from": str(weights)})
    out = {"model": model.cpu().state_dict(), "meta": meta}
    if mean_image is not None:
        out["mean_image"] = mean_image
    save_checkpoint(out, str(output), update_last=False)
    logger.info("recomputed the statistics of %d BatchNorm layers on %d training images: %s", len(bns),
                len(chosen), output)
    return {"output": str(output), "num_images": len(chosen), "bn_layers": len(bns)}
