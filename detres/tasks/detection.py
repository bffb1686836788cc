"""Detection: the only code that reads a :class:`~detres.config.DetConfig`.

The path of one training image::

    build_train_dataset(cfg)          VOC / COCO / shapes file -> (HWC uint8 image, target), resized and
                                      flipped by detres.data.transforms (the only resize)
    build_train_loader_factory(cfg)   aspect-ratio groups, per-item augmentation seed, resumable
    detection_loss(model, batch)      build_model(cfg)(images, targets) -> the four Faster R-CNN losses
    run_train(cfg)                    detres.engine.Trainer + hooks (metrics, checkpoints, evaluation)

and of one test image: ``build_test_dataset`` -> ``build_test_loader`` ->
:func:`~detres.evaluation.inference.inference_on_dataset` (detections mapped back to the original image
by :func:`~detres.evaluation.inference.predict_original`) -> ``build_evaluator`` (VOC devkit AP or COCOeval).

Class count: ``model.num_classes`` counts the background; when it is None (the default) it is derived
from the data set's classes: VOC 20 + 1, a COCO file's own categories + 1 (80 + 1 for COCO itself), shapes
3 + 1, ``data.classes`` + 1. A set value must equal that; training refuses a mismatch before it starts.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from detres.config import DetConfig
from detres.backbones.hub import is_weights_name, suggest_weights, weights_path
from detres.data.coco import COCODetection, find_coco_files
from detres.data.download import DATASETS as DOWNLOADS
from detres.data.download import data_command
from detres.data.dataset import ConcatDetection
from detres.data.loader import build_test_loader as _test_loader
from detres.data.loader import build_train_loader
from detres.data.shapes import SHAPES_CLASSES, generate_shapes_voc
from detres.data.transforms import build_transforms
from detres.data.voc import VOC_CLASSES, VOCDetection, build_voc
from detres.engine.checkpoint import CheckpointError, load_checkpoint
from detres.data.voc import find_voc_dir
from detres.evaluation.coco import COCOEvaluator, evaluate_coco_results, format_coco_table, load_coco_results
from detres.evaluation.inference import inference_on_dataset
from detres.evaluation.visualize import visualize_dataset
from detres.evaluation.voc import (VOCEvaluator, VOCServerResults, evaluate_voc_results_dir, format_voc_table,
                                   read_voc_results, write_server_results)
from detres.modeling import (BackboneSpec, DetectorSpec, InputSpec, PoolerSpec, RoISpec, RPNSpec, SpecError,
                             build_detector)
from detres.modeling.export import export_detector, export_metadata
from detres.modeling.fast import prepare_for_inference
from detres.tasks.common import check_choice, run_training, start_run
from detres.utils import comm
from detres.utils.cli import check_device
from detres.utils.io import data_root
from detres.utils.rng import seed_all

__all__ = ["DATASETS", "class_names_for", "num_classes_for", "check_num_classes", "detector_spec", "build_model",
           "build_train_dataset", "build_test_dataset", "build_evaluator", "build_train_loader_factory",
           "build_test_loader", "detection_loss", "make_eval_fn", "warn_untrained_frozen_bn", "inference_model",
           "load_model_from_checkpoint", "missing_pieces", "require_ready", "run_train", "run_eval", "run_export",
           "run_eval_results", "format_metrics", "BENCHMARK_SPLITS"]

logger = logging.getLogger("detres")

COCO_NUM_CLASSES = 80
DATASETS = ("voc", "coco", "shapes")


def _dataset_kind(cfg: DetConfig) -> str:
    return check_choice("data.dataset", cfg.data.dataset, DATASETS)


def class_names_for(cfg: DetConfig) -> tuple[str, ...] | None:
    """Object class names (background excluded) of the configured data set, without reading files:
    ``data.classes`` if set, else VOC's 20 (shapes: its 3). COCO's own names come from the annotation
    file, so None is returned for it."""
    kind = _dataset_kind(cfg)
    if kind == "shapes":
        return tuple(SHAPES_CLASSES)
    if cfg.data.classes is not None:
        return tuple(cfg.data.classes)
    return tuple(VOC_CLASSES) if kind == "voc" else None


def check_num_classes(cfg: DetConfig, dataset: Any) -> int:
    """Classes including the background for ``dataset``: its class names + 1. A set ``model.num_classes`` must
    equal that (a larger head would predict labels no evaluator knows, a smaller one cannot hold the data);
    refused here, before a model is built or trained, naming the key."""
    names = getattr(dataset, "class_names", None)
    if names is None:
        return num_classes_for(cfg)
    needed = len(names) + 1
    if cfg.model.num_classes is not None and cfg.model.num_classes != needed:
        source = getattr(dataset, "ann_file", None) or getattr(dataset, "root", None) or "the data"
        raise ValueError(f"config key 'model.num_classes': {cfg.model.num_classes} does not match the data: {source} "
                         f"has {len(names)} classes, so the detector needs {needed} (with the background); set "
                         f"{needed}, or null to take it from the data")
    return needed


def num_classes_for(cfg: DetConfig) -> int:
    """Classes including the background from the config alone: ``model.num_classes``, or VOC's/``data.classes``'
    count + 1. A COCO file's own categories are known only once it is read: :func:`check_num_classes` (used by
    training and evaluation) takes them from the data set; here COCO's 80 are assumed."""
    if cfg.model.num_classes is not None:
        if cfg.model.num_classes < 2:
            raise ValueError(f"model.num_classes counts the background and must be >= 2, got {cfg.model.num_classes}")
        return cfg.model.num_classes
    names = class_names_for(cfg)
    return (len(names) if names is not None else COCO_NUM_CLASSES) + 1


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
def detector_spec(cfg: DetConfig) -> DetectorSpec:
    """``cfg.model`` (and the model's input size) as a :class:`~detres.modeling.DetectorSpec`: the one place
    where the config becomes the detector's settings. Each part spec has its config section's field names,
    so the translation is by name; ``input.min_size`` is None because the data pipeline resizes the images.
    A value the spec refuses is reported with its config key."""
    m = cfg.model
    sections = {"backbone": m.backbone, "pooler": m.pooler, "rpn": m.rpn, "roi": m.roi}
    try:
        parts = {name: part(**{f.name: getattr(section, f.name) for f in fields(section)})
                 for (name, section), part in zip(sections.items(), (BackboneSpec, PoolerSpec, RPNSpec, RoISpec))}
        return DetectorSpec(**parts, input=InputSpec(min_size=None, max_size=cfg.data.max_size))
    except SpecError as e:
        key = f"data.{e.field.split('.', 1)[1]}" if e.field.startswith("input.") else f"model.{e.field}"
        raise ValueError(f"config key '{key}': {e.reason}") from None


def build_model(cfg: DetConfig, *, weights: str | None | object = ..., weights_meta: dict | None = None,
                num_classes: int | None = None) -> nn.Module:
    """The C4 Faster R-CNN of ``cfg.model`` (``weights`` overrides ``model.backbone.weights``).

    ``weights_meta``: with ``weights=None``, the preprocessing/style/BN eps to build for (a detector
    checkpoint's "meta"), so that its state dict is loaded into a matching network. Norm "syncbn" builds
    SyncBatchNorm, which synchronises only when torch.distributed is running. ``num_classes`` (background
    included) overrides the config's (the data set's count, see :func:`check_num_classes`).
    """
    spec = detector_spec(cfg)
    if weights is not ...:
        spec = replace(spec, backbone=replace(spec.backbone, weights=weights))
    return build_detector(spec, num_classes if num_classes is not None else num_classes_for(cfg),
                          weights_meta=weights_meta or None)


def load_model_from_checkpoint(cfg: DetConfig, checkpoint: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """``build_model(cfg)`` without ImageNet weights, then the detector weights of ``checkpoint``
    (a trainer checkpoint / ``model_final.pth``); eval mode. CheckpointError names a bad file."""
    state = load_checkpoint(checkpoint)
    num_classes = _checkpoint_num_classes(state) if cfg.model.num_classes is None else None
    # the checkpoint's style, BN eps and normalisation (e.g. MSRA BGR/255), not the default ones
    model = build_model(cfg, weights=None, weights_meta=state.get("meta") or None, num_classes=num_classes)
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as e:  # shapes differ: another backbone or number of classes
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"checkpoint {checkpoint}: does not fit the config's model ({cfg.model.backbone.name}, "
                              f"{num_classes or num_classes_for(cfg)} classes): {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {checkpoint}: does not match the config's model "
                              f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    return model.to(device).eval()


def label_to_cat_id(dataset: Any) -> dict[int, int]:
    """A COCO data set's label (1..K) -> category id map (a concatenation's first part; its parts share the
    class names); ``{}`` for other formats."""
    part = (getattr(dataset, "datasets", None) or [dataset])[0]
    return {int(k): int(v) for k, v in (getattr(part, "label_to_cat_id", None) or {}).items()}


def _checkpoint_num_classes(state: dict) -> int | None:
    """Classes (background included) of a detector checkpoint: its class names + 1, else its class-score
    layer's rows (None when neither is there, e.g. a converted detector)."""
    names = state.get("class_names")
    if names:
        return len(names) + 1
    weight = state.get("model", {}).get("roi_heads.box_predictor.cls_score.weight")
    return int(weight.shape[0]) if torch.is_tensor(weight) else None


def warn_untrained_frozen_bn(cfg: DetConfig) -> None:
    """Frozen BN keeps the statistics the weights came with; on random weights those are mean 0 / variance 1
    for every layer, the activations grow through 100 layers and the first losses are often NaN."""
    b = cfg.model.backbone
    if b.weights is None and b.norm == "frozen_bn":
        logger.warning("model.backbone.weights is null but model.backbone.norm is frozen_bn: a randomly initialised "
                       "network with frozen BatchNorm (and stages frozen up to freeze_at=%d) rarely trains and often "
                       "gives NaN losses at once; give ImageNet weights (tools/convert_weights.py), or train from "
                       "scratch with model.backbone.norm=bn (or gn) and model.backbone.freeze_at=0", b.freeze_at)


def detection_loss(model: nn.Module, batch: tuple[list[torch.Tensor], list[dict]]) -> dict[str, torch.Tensor]:
    """``model(images, targets)`` with the batch moved to the model's device: the four Faster R-CNN losses."""
    images, targets = batch
    device = next(model.parameters()).device
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return model(images, targets)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def _shapes_dir(cfg: DetConfig):
    """The synthetic set under ``<root>/shapes``, generated on rank 0 if absent (idempotent)."""
    s = cfg.data.shapes
    out = data_root(cfg.data.root) / "shapes"
    if comm.is_main_process():
        generate_shapes_voc(out, num_train=s.num_train, num_test=s.num_test, image_size=s.image_size,
                            min_objects=s.min_objects, max_objects=s.max_objects, seed=s.seed)
    comm.barrier()
    return out


def _build_split(cfg: DetConfig, names: Sequence[str], *, train: bool, transforms) -> Any:
    kind = _dataset_kind(cfg)
    root = data_root(cfg.data.root)
    keep_difficult = cfg.data.keep_difficult_train if train else True
    labelled = train or cfg.test.has_labels
    if not labelled and kind != "voc":
        raise ValueError("test.has_labels=false (results for an evaluation server) is supported for VOC only")
    if kind == "voc":
        return build_voc(root, names, transforms=transforms, keep_difficult=keep_difficult, labelled=labelled,
                         class_names=class_names_for(cfg))
    if kind == "shapes":
        d = _shapes_dir(cfg)
        parts = [VOCDetection(d, split=n, class_names=SHAPES_CLASSES, keep_difficult=keep_difficult,
                              transforms=transforms) for n in names]
    else:
        parts = []
        for n in names:
            if n.endswith(".json"):  # a COCO file of your own: images under data.image_root or beside it
                ann = Path(n)
                image_dir = Path(cfg.data.image_root) if cfg.data.image_root else ann.parent
            else:  # the COCO release: <root>/coco/<split> and annotations/instances_<split>.json
                image_dir, ann = find_coco_files(root, n)
            parts.append(COCODetection(image_dir, ann, train=train, transforms=transforms,
                                       class_names=cfg.data.classes, crowd=cfg.data.coco_crowd))
    return parts[0] if len(parts) == 1 else ConcatDetection(parts)


def build_train_dataset(cfg: DetConfig) -> Any:
    """The training set(s) of ``cfg.data.train`` with the training transforms (resize, flip, jitter)."""
    d = cfg.data
    if not d.train:
        raise ValueError("data.train is empty")
    tf = build_transforms(train=True, min_size=d.min_size, max_size=d.max_size, flip_prob=d.flip_prob,
                          color_jitter=d.color_jitter)
    return _build_split(cfg, list(d.train), train=True, transforms=tf)


def build_test_dataset(cfg: DetConfig, split: str | None = None) -> Any:
    """The evaluation set (``split`` or ``cfg.data.test``) with the test transforms (resize only)."""
    tf = build_transforms(train=False, min_size=cfg.data.min_size, max_size=cfg.data.max_size)
    return _build_split(cfg, [split or cfg.data.test], train=False, transforms=tf)


def build_train_loader_factory(cfg: DetConfig, dataset: Any) -> Callable[[int], Iterator]:
    """``f(start_iter)`` -> infinite iterator of ``(images, targets)``, resumable at ``start_iter``."""
    def factory(start_iter: int) -> Iterator:
        return build_train_loader(dataset, images_per_batch=cfg.solver.ims_per_batch,
                                  num_workers=cfg.data.num_workers, seed=cfg.seed, start_iter=start_iter,
                                  aspect_ratio_grouping=cfg.data.aspect_ratio_grouping)
    return factory


def build_test_loader(cfg: DetConfig, dataset: Any, *, num_workers: int | None = None):
    """This rank's ordered slice of ``dataset`` in batches of ``test.ims_per_batch``."""
    workers = cfg.data.num_workers if num_workers is None else num_workers
    return _test_loader(dataset, batch_size=cfg.test.ims_per_batch, num_workers=workers)


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def build_evaluator(cfg: DetConfig, dataset: Any, output_dir: str | None = None,
                    curves_path: str | None = None) -> Any:
    """VOC07 11-point/area AP (voc, shapes; ground truth from ``dataset``'s XML) or COCOeval (coco).
    ``output_dir``: where the results files go (VOC comp4 txt / COCO json); None = nowhere.
    With ``test.has_labels: false`` (VOC 2012 test) the evaluator writes the evaluation server's files into
    ``output_dir`` (default ``<output_dir of the config>/results``) and a .tar.gz beside it instead of AP."""
    if not cfg.test.has_labels:
        year, _, split = cfg.data.test.partition("_")
        names = getattr(dataset, "class_names", None) or class_names_for(cfg)
        return VOCServerResults(names, output_dir=output_dir or os.path.join(cfg.output_dir, "results"),
                                year=year, split=split or "test")
    if _dataset_kind(cfg) == "coco":
        return COCOEvaluator(dataset, output_dir=output_dir, curves_path=curves_path)
    names = getattr(dataset, "class_names", None) or class_names_for(cfg)
    return VOCEvaluator(names, gt_source=dataset, output_dir=output_dir, curves_path=curves_path)


def make_eval_fn(cfg: DetConfig, dataset: Any, *, device: torch.device, output_dir: str | None = None,
                 num_workers: int | None = None, curves_path: str | None = None) -> Callable[[nn.Module], dict]:
    """``f(model) -> evaluator results`` over ``dataset`` (every rank runs its shard); VOC-rule evaluations
    also draw the per-class precision/recall curves to ``curves_path``."""
    evaluator = build_evaluator(cfg, dataset, output_dir=output_dir, curves_path=curves_path)
    loader = build_test_loader(cfg, dataset, num_workers=num_workers)

    def eval_fn(model: nn.Module) -> dict:
        return inference_on_dataset(inference_model(cfg, model, device), loader, evaluator, device=device,
                                    amp=cfg.solver.amp)
    return eval_fn


def inference_model(cfg: DetConfig, model: nn.Module, device: str | torch.device) -> nn.Module:
    """The model evaluation, prediction and the ``vis/`` pictures run: the fast path's copy with the options of
    ``test.fast`` (``test.fast_inference``, the default) or ``model`` itself."""
    if not cfg.test.fast_inference:
        return model
    return prepare_for_inference(model, device=device, **asdict(cfg.test.fast))


# --------------------------------------------------------------------------------------------------
# the jobs of the tools
# --------------------------------------------------------------------------------------------------
def missing_pieces(cfg: DetConfig) -> list[str]:
    """What training needs and does not find, one line each with the command that gets it: a data set not
    unpacked under ``data.root`` (``python tools/get_data.py NAME``), weights that are not there (a missing file:
    the weights name to use; a name: fetched here, so a download failure is reported with its URL)."""
    lines = _missing_data(cfg)
    weights = cfg.model.backbone.weights
    if weights and is_weights_name(weights):
        try:
            weights_path(weights)  # downloaded and converted now (once per machine), read from the cache later
        except ValueError as e:
            lines.append(f"weights {weights}: {e}")
    elif weights and not os.path.isfile(weights):
        name = suggest_weights(cfg.model.backbone.name)
        lines.append(f"weights: {weights} not found: set model.backbone.weights={name or 'NAME'} (downloaded and "
                     "converted on first use; detres.backbones.hub.list_weights() lists the names), or "
                     "model.backbone.weights=null to train from random weights")
    return lines


def _missing_data(cfg: DetConfig) -> list[str]:
    kind, root = _dataset_kind(cfg), data_root(cfg.data.root)
    missing: dict[str, list[str]] = {}
    for name in [*cfg.data.train, cfg.data.test]:
        if kind == "voc" and not (root / "ImageSets" / "Main" / f"{name}.txt").is_file():
            year, sep, split = name.partition("_")
            if not sep or not year.isdigit():
                continue  # not a devkit name: build_voc says what is wrong with it
            base = next((d for d in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}") if d.is_dir()),
                        root / "VOCdevkit" / f"VOC{year}")
            needed = base / "ImageSets" / "Main" / f"{split}.txt"
            server = (year, split) == ("2012", "test")  # given out by the evaluation server only
            get = f"voc{year}" if f"voc{year}" in DOWNLOADS and not server else None
        elif kind == "coco" and not name.endswith(".json"):
            needed = root / "coco" / "annotations" / f"instances_{name}.json"
            get = f"coco{name[-4:]}" if f"coco{name[-4:]}" in DOWNLOADS else None
        else:
            continue
        if not needed.is_file():
            how = data_command(get, cfg.data.root) if get else "place it by hand (data/README.md)"
            missing.setdefault(how, []).append(str(needed))
    return [f"data: {', '.join(files)} not found: {how}" for how, files in missing.items()]


def require_ready(cfg: DetConfig) -> None:
    """Stop before training when :func:`missing_pieces` finds any: one piece is the error itself; several are
    printed one per line on stderr (first process only) and the error counts them."""
    lines = missing_pieces(cfg)
    if len(lines) == 1:
        raise ValueError(lines[0])
    if lines:
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(f"missing: {line}" for line in lines), file=sys.stderr)
        raise ValueError(f"cannot train: {len(lines)} pieces are missing (listed above, each with its command)")


def run_train(cfg: DetConfig, *, resume: bool = False, overwrite: bool = False, new_solver: bool = False,
              device: str | None = None, loss_fn: Callable | None = None, progress: bool = True) -> dict:
    """The whole job of ``tools/train_det.py`` (also under torchrun).

    Writes config.yaml, log.txt, metrics.jsonl, TensorBoard events, checkpoints, model_final.pth and
    eval.json (see :func:`detres.tasks.common.run_training`), then ``vis/<image_id>.png`` for
    ``test.num_vis_images`` test images. ``loss_fn`` replaces :func:`detection_loss` (tests use it).
    A finished ``output_dir`` is refused unless ``resume`` (continue it; ``new_solver`` applies the config's
    solver settings from the checkpoint's iteration) or ``overwrite`` (replace it).
    """
    require_ready(cfg)  # data and weights there (weights fetched by name), else one line per missing piece
    dev = start_run(cfg, device=device, resume=resume, overwrite=overwrite)
    train_set, test_set = build_train_dataset(cfg), build_test_dataset(cfg)
    num_classes = check_num_classes(cfg, train_set)  # refused here, before hours of training
    if check_num_classes(cfg, test_set) != num_classes or tuple(test_set.class_names) != tuple(train_set.class_names):
        raise ValueError(f"data.test {cfg.data.test!r} has other classes than data.train {list(cfg.data.train)}: "
                         f"{list(test_set.class_names)[:8]} vs {list(train_set.class_names)[:8]}; set data.classes")
    warn_untrained_frozen_bn(cfg)
    seed_all(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, num_classes=num_classes).to(dev)
    seed_all(cfg.seed + comm.get_rank())  # different sampling per rank
    logger.info("train: %s (%d images), test: %s (%d images)", cfg.data.train, len(train_set), cfg.data.test,
                len(test_set))
    result = run_training(
        cfg, model=comm.wrap_model(model, dev), loss_fn=loss_fn or detection_loss,
        loader_factory=build_train_loader_factory(cfg, train_set),
        eval_fn=make_eval_fn(cfg, test_set, device=dev, output_dir=os.path.join(cfg.output_dir, "results"),
                             curves_path=os.path.join(cfg.output_dir, "pr_curves.png")),
        meta=model.weights_meta, device=dev, resume=resume, new_solver=new_solver, progress=progress,
        # the checkpoint keeps the class names and, for COCO data, the label -> category-id map (predictions
        # are written with the data's own ids)
        extra_state={"class_names": list(train_set.class_names), "label_to_cat_id": label_to_cat_id(train_set)})
    if comm.is_main_process() and cfg.test.num_vis_images > 0:
        names = getattr(test_set, "class_names", None) or class_names_for(cfg) or ()
        out = os.path.join(cfg.output_dir, "vis")
        # drawn with the model the evaluation used (the fast path's copy unless test.fast_inference is off)
        paths = visualize_dataset(inference_model(cfg, model, dev), test_set, out, class_names=names,
                                  num_images=cfg.test.num_vis_images, device=dev, score_thresh=cfg.test.vis_thresh)
        logger.info("drew detections on %d test images in %s", len(paths), out)
    comm.barrier()
    return result


def run_eval(cfg: DetConfig, checkpoint: str, *, split: str | None = None, device: str | None = None,
             output_dir: str | None = None, num_workers: int | None = None, data_root: str | None = None) -> dict:
    """Evaluate ``checkpoint`` on ``split`` (default ``data.test``); returns the evaluator's metrics and, with
    ``output_dir``, writes the results files there (VOC comp4 txt / COCO json). ``data_root`` replaces
    ``data.root`` (tools/eval.py's ``--data-root``)."""
    dev = comm.init_distributed(device=check_device(device))  # under torchrun: each rank evaluates its shard
    if not Path(checkpoint).is_file():
        raise ValueError(f"{checkpoint}: checkpoint not found")
    if data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    dataset = build_test_dataset(cfg, split)
    model = load_model_from_checkpoint(cfg, checkpoint, device=dev)
    expected = check_num_classes(cfg, dataset)
    head = model.roi_heads.box_predictor.cls_score.out_features
    if head != expected:
        raise ValueError(f"{checkpoint}: the detector has {head - 1} classes but the test data "
                         f"{getattr(dataset, 'ann_file', None) or cfg.data.test} has {expected - 1}")
    curves = os.path.join(output_dir, "pr_curves.png") if output_dir else None
    return make_eval_fn(cfg, dataset, device=dev, output_dir=output_dir, num_workers=num_workers,
                        curves_path=curves)(model)


def run_export(cfg: DetConfig, checkpoint: str, out: str, *, fmt: str, opset: int, overwrite: bool = False) -> Path:
    """The job of ``tools/export.py``: the detector of ``checkpoint`` (trained with ``cfg``) exported to ``out``
    as ``fmt`` (see :func:`detres.modeling.export.export_detector`), with the class names, category ids, the
    resize rule (``data.min_size``/``max_size``) and the normalisation inside the file; traced on a
    ``min_size`` x (4:3, at most ``max_size``) image. Returns the path written."""
    if os.path.exists(out) and os.path.exists(checkpoint) and os.path.samefile(out, checkpoint):
        raise ValueError(f"--out {out}: is the checkpoint itself; export to another file")
    model = load_model_from_checkpoint(cfg, checkpoint)
    state = load_checkpoint(checkpoint)
    min_size = cfg.data.min_size if isinstance(cfg.data.min_size, int) else max(cfg.data.min_size)
    meta = export_metadata(model, class_names=state.get("class_names") or class_names_for(cfg),
                           label_to_cat_id=state.get("label_to_cat_id"), min_size=min_size,
                           max_size=cfg.data.max_size)
    size = (min_size, min(cfg.data.max_size, round(min_size * 4 / 3)))
    return export_detector(model, out, fmt=fmt, example_size=size, opset=opset, metadata=meta, overwrite=overwrite)


#: Benchmarks of ``tools/eval.py --results``: VOC (year, default image set) or COCO.
BENCHMARK_SPLITS = {"voc07": ("2007", "test"), "voc12": ("2012", "val"), "coco": (None, "val2017")}


def run_eval_results(benchmark: str, results: str, *, root: str | None = None, split: str | None = None,
                     ann_file: str | None = None) -> dict:
    """Evaluate existing results files: VOC ``comp4_det_test_<class>.txt`` in the folder ``results``
    against ``<root>/VOC<year>`` (or ``VOCdevkit/VOC<year>``), or a COCO results JSON against
    ``ann_file`` (default ``<root>/coco/annotations/instances_<split>.json``). ValueError names a bad file.

    VOC 2012 ``test`` has no public labels: its results are checked against the image set and packed for
    the evaluation server (``<results>_server/VOC2012/Main`` and ``<results>_server.tar.gz``) instead."""
    if benchmark not in BENCHMARK_SPLITS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {list(BENCHMARK_SPLITS)}")
    if not os.path.exists(results):
        raise ValueError(f"{results}: results path not found")
    year, default_split = BENCHMARK_SPLITS[benchmark]
    split = split or default_split
    if benchmark == "coco":
        ann = ann_file or data_root(root) / "coco" / "annotations" / f"instances_{split}.json"
        return evaluate_coco_results(ann, load_coco_results(results, ann))  # errors name the file
    if (benchmark, split) == ("voc12", "test"):
        dataset = VOCDetection(find_voc_dir(data_root(root), year), split=split, labelled=False, check_images=False)
        dets = read_voc_results(results, dataset.class_names, valid_ids=set(dataset.ids))
        out = os.path.normpath(results) + "_server"
        archive = write_server_results(dets, out, class_names=dataset.class_names, year=year, split=split)
        return {"server_results": str(archive), "results_dir": os.path.join(out, f"VOC{year}", "Main"),
                "num_images": len(dataset), "num_detections": int(sum(len(d.scores) for d in dets.values()))}
    dataset = VOCDetection(find_voc_dir(data_root(root), year), split=split, keep_difficult=True, check_images=False)
    return evaluate_voc_results_dir(results, dataset)


def format_metrics(metrics: dict) -> str:
    """The per-class table of a VOC or COCO metrics dict (whichever schema it has), or, for a split without
    public labels, where the evaluation server's files are."""
    if "server_results" in metrics:
        return (f"no public labels: {metrics['num_detections']} detections on {metrics['num_images']} images written "
                f"to {metrics['results_dir']}\nupload {metrics['server_results']} to the PASCAL VOC evaluation server")
    return format_coco_table(metrics) if "AP50" in metrics else format_voc_table(metrics)
