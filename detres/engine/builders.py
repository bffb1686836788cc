"""Build everything a run needs from a config: the ONE place that reads ``DetConfig`` fields.

``tools/train_det.py``, ``tools/eval.py`` and ``tools/predict.py`` only parse arguments and call these.

Class count: ``model.num_classes`` counts the background; when it is None (the default) it is derived
from the data set's class list: VOC 20 + 1, COCO 80 + 1, shapes 3 + 1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from detres.config import DetConfig
from detres.engine import distributed as du
from detres.engine.solver import build_sgd, build_warmup_multistep, scale_lr

__all__ = ["resolve_data_root", "class_names_for", "num_classes_for", "build_model", "build_train_dataset",
           "build_test_dataset", "build_test_transforms", "build_evaluator", "build_optimizer", "build_scheduler",
           "build_train_loader_factory", "build_test_loader", "scaled_lr", "time_train_step", "make_eval_fn",
           "run_train_det", "run_predict", "load_model_from_checkpoint"]

logger = logging.getLogger("detres")

COCO_NUM_CLASSES = 80
DATASETS = ("voc", "coco", "shapes")


def resolve_data_root(cfg: DetConfig) -> Path:
    """``cfg.data.root`` if set, else ``$DETRES_DATA``, else ``./data``."""
    return Path(cfg.data.root or os.environ.get("DETRES_DATA") or "data")


def _check_dataset(cfg: DetConfig) -> str:
    name = cfg.data.dataset
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {name!r}")
    return name


def class_names_for(cfg: DetConfig) -> tuple[str, ...] | None:
    """Object class names (background excluded) of the configured data set, without reading files.
    COCO's names come from the annotation file, so None is returned for it."""
    name = _check_dataset(cfg)
    if name == "voc":
        from detres.data.voc import VOC_CLASSES
        return tuple(VOC_CLASSES)
    if name == "shapes":
        from detres.data.shapes import SHAPES_CLASSES
        return tuple(SHAPES_CLASSES)
    return None


def num_classes_for(cfg: DetConfig) -> int:
    """Classes including the background: ``model.num_classes`` or derived from the data set."""
    if cfg.model.num_classes is not None:
        if cfg.model.num_classes < 2:
            raise ValueError(f"model.num_classes counts the background and must be >= 2, got {cfg.model.num_classes}")
        return cfg.model.num_classes
    names = class_names_for(cfg)
    return (len(names) if names is not None else COCO_NUM_CLASSES) + 1


def build_model(cfg: DetConfig, *, weights: str | None | object = ..., weights_meta: dict | None = None) -> nn.Module:
    """The C4 Faster R-CNN of ``cfg.model`` (``weights`` overrides ``model.backbone.weights``).

    ``weights_meta``: with ``weights=None``, the preprocessing/style/BN eps to build for (from a detector
    checkpoint's "meta"), so that its state dict is loaded into a matching network.

    Training norm "syncbn" builds SyncBatchNorm, which syncs only when torch.distributed is running.
    """
    m = cfg.model
    b = m.backbone
    from detres.modeling import build_detector
    return build_detector(
        backbone=b.name, num_classes=num_classes_for(cfg), weights=b.weights if weights is ... else weights,
        style=b.style, norm=b.norm, freeze_at=b.freeze_at, shortcut=b.shortcut,
        pooler=m.pooler.type, pooler_resolution=m.pooler.resolution, pooler_sampling_ratio=m.pooler.sampling_ratio,
        pooler_aligned=m.pooler.aligned, anchor_sizes=tuple(m.rpn.anchor_sizes),
        aspect_ratios=tuple(m.rpn.aspect_ratios), rpn_pre_nms_top_n_train=m.rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn.pre_nms_top_n_test, rpn_post_nms_top_n_train=m.rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=m.rpn.post_nms_top_n_test, rpn_batch_size_per_image=m.rpn.batch_size_per_image,
        box_batch_size_per_image=m.roi.batch_size_per_image, box_score_thresh=m.roi.score_thresh,
        box_nms_thresh=m.roi.nms_thresh, detections_per_img=m.roi.detections_per_img,
        min_size=None, max_size=cfg.data.max_size, **({"weights_meta": weights_meta} if weights_meta else {}))


def build_test_transforms(cfg: DetConfig):
    from detres.data.transforms import build_transforms
    return build_transforms(train=False, min_size=cfg.data.min_size, max_size=cfg.data.max_size)


def _shapes_dir(cfg: DetConfig) -> Path:
    """Generate the synthetic set under ``<root>/shapes`` if it is absent (idempotent)."""
    from detres.data.shapes import generate_shapes_voc
    s = cfg.data.shapes
    out = resolve_data_root(cfg) / "shapes"
    if du.is_main_process():
        generate_shapes_voc(out, num_train=s.num_train, num_test=s.num_test, image_size=s.image_size,
                            min_objects=s.min_objects, max_objects=s.max_objects, seed=s.seed)
    du.barrier()
    return out


def _build_split(cfg: DetConfig, names: list[str], *, train: bool, transforms) -> Any:
    kind = _check_dataset(cfg)
    root = resolve_data_root(cfg)
    keep_difficult = cfg.data.keep_difficult_train if train else True
    if kind == "voc":
        from detres.data.voc import build_voc
        return build_voc(root, names, transforms=transforms, keep_difficult=keep_difficult)
    if kind == "shapes":
        from detres.data.shapes import SHAPES_CLASSES
        from detres.data.voc import VOCConcatDataset, VOCDetection
        d = _shapes_dir(cfg)
        parts = [VOCDetection(d, split=n, class_names=SHAPES_CLASSES, keep_difficult=keep_difficult,
                              transforms=transforms) for n in names]
        return parts[0] if len(parts) == 1 else VOCConcatDataset(parts)
    from torch.utils.data import ConcatDataset
    from detres.data.coco import COCODetection, find_coco_files
    parts = []
    for n in names:
        image_dir, ann = find_coco_files(root, n)
        parts.append(COCODetection(image_dir, ann, train=train, transforms=transforms))
    if len(parts) == 1:
        return parts[0]
    cat = ConcatDataset(parts)
    cat.class_names = parts[0].class_names  # type: ignore[attr-defined]
    return cat


def build_train_dataset(cfg: DetConfig) -> Any:
    """The training set(s) of ``cfg.data.train`` with the training transforms (resize, flip, jitter)."""
    from detres.data.transforms import build_transforms
    if not cfg.data.train:
        raise ValueError("data.train is empty")
    tf = build_transforms(train=True, min_size=cfg.data.min_size, max_size=cfg.data.max_size,
                          flip_prob=cfg.data.flip_prob, color_jitter=cfg.data.color_jitter)
    return _build_split(cfg, list(cfg.data.train), train=True, transforms=tf)


def build_test_dataset(cfg: DetConfig, split: str | None = None) -> Any:
    """The evaluation set (``split`` or ``cfg.data.test``) with the test transforms (resize only)."""
    return _build_split(cfg, [split or cfg.data.test], train=False, transforms=build_test_transforms(cfg))


def build_evaluator(cfg: DetConfig, dataset: Any, output_dir: str | None = None) -> Any:
    """VOC07 11-point/area AP evaluator for voc and shapes (ground truth from ``dataset``'s XML), COCOeval
    for coco. ``output_dir``: where the results files go (VOC comp4 txt / COCO json), None = nowhere."""
    kind = _check_dataset(cfg)
    if kind == "coco":
        from detres.evaluation.coco import COCOEvaluator
        return COCOEvaluator(dataset, output_dir=output_dir)
    from detres.evaluation.voc import VOCEvaluator
    names = getattr(dataset, "class_names", None) or class_names_for(cfg)
    return VOCEvaluator(names, gt_source=dataset, output_dir=output_dir)


def scaled_lr(cfg: Any, world_size: int | None = None) -> tuple[float, int]:
    """(learning rate after the linear scaling rule, total batch)."""
    world = du.get_world_size() if world_size is None else world_size
    total = cfg.solver.ims_per_batch * world
    return scale_lr(cfg.solver.base_lr, total_batch=total, reference_batch=cfg.solver.reference_batch), total


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) at the linearly scaled learning rate; logs the scaling it applied."""
    lr, total = scaled_lr(cfg)
    s = cfg.solver
    if total != s.reference_batch:
        logger.info("linear scaling rule: total batch %d (%d process(es) x %d images) vs reference %d -> "
                    "lr %.6g x %d/%d = %.6g", total, du.get_world_size(), s.ims_per_batch, s.reference_batch,
                    s.base_lr, total, s.reference_batch, lr)
    else:
        logger.info("learning rate %.6g (total batch %d = solver.reference_batch, no scaling)", lr, total)
    return build_sgd(du.unwrap_model(model), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration linear warmup then multi-step decay (``solver.steps``, ``gamma``)."""
    s = cfg.solver
    if any(step > s.max_iter for step in s.steps):
        logger.warning("solver.steps %s has steps beyond solver.max_iter=%d", s.steps, s.max_iter)
    return build_warmup_multistep(optimizer, steps=s.steps, gamma=s.gamma, warmup_iters=s.warmup_iters,
                                  warmup_factor=s.warmup_factor)


def build_train_loader_factory(cfg: DetConfig, dataset: Any) -> Callable[[int], Iterator]:
    """``f(start_iter)`` -> infinite iterator of ``(images, targets)``, resumable at ``start_iter``."""
    from detres.data.loader import build_train_loader

    def factory(start_iter: int) -> Iterator:
        return build_train_loader(dataset, images_per_batch=cfg.solver.ims_per_batch,
                                  num_workers=cfg.data.num_workers, seed=cfg.seed, start_iter=start_iter,
                                  aspect_ratio_grouping=cfg.data.aspect_ratio_grouping)
    return factory


def build_test_loader(cfg: DetConfig, dataset: Any):
    from detres.data.loader import build_test_loader as _btl
    return _btl(dataset, batch_size=cfg.test.ims_per_batch, num_workers=cfg.data.num_workers)


def make_eval_fn(cfg: DetConfig, dataset: Any, *, device: torch.device, output_dir: str | None = None
                 ) -> Callable[[nn.Module], dict]:
    """``f(model) -> evaluator results`` over ``dataset`` (every rank runs its shard)."""
    from detres.evaluation.inference import inference_on_dataset
    evaluator = build_evaluator(cfg, dataset, output_dir=output_dir)
    loader = build_test_loader(cfg, dataset)

    def eval_fn(model: nn.Module) -> dict:
        return inference_on_dataset(model, loader, evaluator, device=device, amp=cfg.solver.amp)
    return eval_fn


def time_train_step(cfg: DetConfig, *, iters: int = 3, warmup: int = 1, image_size: tuple[int, int] | None = None,
                    device: str | torch.device = "cpu") -> dict:
    """Seconds per training iteration of ``cfg``'s detector on random images (no data, no weights).

    Images are ``image_size`` (H, W), default (min_size, max_size-capped 4:3) as the paper's 600x800;
    each carries 3 random boxes. Returns ``{"s_per_iter", "iters", "image_size", "ims_per_batch", "backbone"}``.
    """
    from detres.engine.trainer import time_sgd_steps
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg, weights=None).to(device).train()
    opt = build_sgd(model, lr=1e-4, momentum=cfg.solver.momentum, weight_decay=cfg.solver.weight_decay)
    h, w = image_size or (cfg.data.min_size, min(cfg.data.max_size, round(cfg.data.min_size * 4 / 3)))
    k = num_classes_for(cfg) - 1

    def batch():
        imgs, tgts = [], []
        for _ in range(cfg.solver.ims_per_batch):
            imgs.append(torch.rand(3, h, w, device=device))
            xy = torch.rand(3, 2) * torch.tensor([w * 0.6, h * 0.6])
            wh = torch.rand(3, 2) * torch.tensor([w * 0.3, h * 0.3]) + 16
            tgts.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                         "labels": torch.randint(1, k + 1, (3,), device=device)})
        return imgs, tgts

    times = time_sgd_steps(lambda b: sum(model(*b).values()), batch, opt, iters=iters, warmup=warmup,
                           device=device, amp=cfg.solver.amp)
    return {"s_per_iter": sum(times) / len(times), "iters": iters, "image_size": [h, w],
            "ims_per_batch": cfg.solver.ims_per_batch, "backbone": cfg.model.backbone.name}


def run_train_det(cfg: DetConfig, *, resume: bool = False, device: str | None = None,
                  loss_fn: Callable | None = None, progress: bool = True) -> dict:
    """The whole detection training job of ``tools/train_det.py`` (also under torchrun).

    Saves ``config.yaml``, trains with :func:`detres.engine.trainer.train` (metrics.jsonl, TensorBoard,
    checkpoints, model_final.pth, eval.json) and draws ``vis/<image_id>.png`` for ``test.num_vis_images``
    test images. ``loss_fn`` replaces :func:`~detres.engine.trainer.detection_loss_fn` (tests use it).
    """
    from detres.config import save_config
    from detres.engine.logging import setup_logger
    from detres.engine.trainer import detection_loss_fn, seed_all, train
    from detres.engine.visualize import visualize_dataset

    dev = du.init_distributed(device=device)
    main = du.is_main_process()
    out = cfg.output_dir
    log = setup_logger(out, main_process=main)
    if main:
        os.makedirs(out, exist_ok=True)
        save_config(cfg, os.path.join(out, "config.yaml"))
    log.info("output_dir %s, %d process(es), device %s", out, du.get_world_size(), dev)
    seed_all(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg).to(dev)
    seed_all(cfg.seed + du.get_rank())  # different sampling per rank
    ddp_model = du.wrap_model(model, dev)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    train_set = build_train_dataset(cfg)
    test_set = build_test_dataset(cfg)
    log.info("train: %s (%d images), test: %s (%d images)", cfg.data.train, len(train_set), cfg.data.test,
             len(test_set))
    eval_fn = make_eval_fn(cfg, test_set, device=dev, output_dir=os.path.join(out, "results"))
    from detres.config import config_to_dict
    result = train(model=ddp_model, loss_fn=loss_fn or detection_loss_fn, optimizer=optimizer, scheduler=scheduler,
                   train_loader_factory=build_train_loader_factory(cfg, train_set), max_iter=cfg.solver.max_iter,
                   output_dir=out, checkpoint_period=cfg.solver.checkpoint_period,
                   eval_period=cfg.test.eval_period, eval_fn=eval_fn, amp=cfg.solver.amp,
                   clip_grad_norm=cfg.solver.clip_grad_norm, log_period=cfg.solver.log_period,
                   meta=getattr(model, "weights_meta", {}), config_dict=config_to_dict(cfg), resume=resume,
                   device=dev, progress=progress)
    if main and cfg.test.num_vis_images > 0:
        names = getattr(test_set, "class_names", None) or class_names_for(cfg) or ()
        paths = visualize_dataset(model, test_set, os.path.join(out, "vis"), class_names=names,
                                  num_images=cfg.test.num_vis_images, device=dev)
        log.info("drew detections on %d test images in %s", len(paths), os.path.join(out, "vis"))
    du.barrier()
    return result


def load_model_from_checkpoint(cfg: DetConfig, checkpoint: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """``build_model(cfg)`` without ImageNet weights, then the detector weights of ``checkpoint``
    (a trainer checkpoint / ``model_final.pth``); eval mode. CheckpointError names a bad file."""
    from detres.engine.checkpoint import CheckpointError, load_checkpoint
    state = load_checkpoint(checkpoint)
    # the checkpoint's style, BN eps and normalisation (e.g. MSRA BGR/255), not the default ones
    model = build_model(cfg, weights=None, weights_meta=state.get("meta") or None)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {checkpoint}: does not match the config's model "
                              f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    return model.to(device).eval()


@torch.no_grad()
def run_predict(cfg: DetConfig, checkpoint: str, images: list[str], out_dir: str, *, score_thresh: float = 0.5,
                device: str | torch.device = "cpu") -> list[dict]:
    """Detect objects in image files; write ``out_dir/<stem>.png`` (boxes, class names, scores drawn on
    the original image) and ``out_dir/predictions.json``; return the JSON records.

    Each record: ``{"image": path, "height", "width", "detections": [{"box": [x1, y1, x2, y2] (original
    pixels, 0-based xyxy), "label": 1..K, "class": name, "score"}]}`` for detections >= ``score_thresh``.
    """
    import json
    from detres.data.transforms import read_image_rgb, to_original
    from detres.engine.visualize import draw_detections, save_png

    model = load_model_from_checkpoint(cfg, checkpoint, device=device)
    names = class_names_for(cfg)
    if names is None:  # COCO: names from the test annotation file
        names = tuple(getattr(build_test_dataset(cfg), "class_names"))
    tf = build_test_transforms(cfg)
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for path in images:
        img = read_image_rgb(path)
        h0, w0 = img.shape[:2]
        tensor, target = tf(img, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                  "image_id": os.path.basename(path)})
        out = model([tensor.to(device)])[0]
        keep = out["scores"] >= score_thresh
        boxes = to_original(out["boxes"][keep].float().cpu(), target)
        labels = out["labels"][keep].cpu()
        scores = out["scores"][keep].float().cpu()
        original = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        drawn = draw_detections(original, boxes, labels, scores, names, score_thresh=score_thresh)
        stem = os.path.splitext(os.path.basename(path))[0]
        save_png(drawn, os.path.join(out_dir, f"{stem}.png"))
        records.append({"image": os.fspath(path), "height": h0, "width": w0, "detections": [
            {"box": [round(float(v), 2) for v in b], "label": int(lab),
             "class": names[int(lab) - 1] if 1 <= int(lab) <= len(names) else str(int(lab)), "score": float(s)}
            for b, lab, s in zip(boxes.tolist(), labels.tolist(), scores.tolist())]})
    with open(os.path.join(out_dir, "predictions.json"), "w", encoding="utf-8") as f:
        json.dump(records, f, indent=2)
    return records
