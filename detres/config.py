"""Typed configuration: dataclass defaults < YAML file (one ``_base_`` level) < ``key.sub=value`` overrides.

Every default lives in the dataclasses below with a one-line comment saying what it is and, for the
paper-derived ones, where it comes from:

* He et al. 2015, "Deep Residual Learning for Image Recognition" (ResNet), Sec. 3.4 and Appendix A.
* Ren et al. 2015, "Faster R-CNN" (NIPS / TPAMI), Sec. 3.1-3.3 and 4.
* py-faster-rcnn (the reference Caffe code): ``experiments/cfgs`` and ``models/*/solver.prototxt``.

Loading:

>>> cfg = load_config("configs/voc07_r101.yaml", ["solver.base_lr=0.002", "solver.steps=[60000]"])

The YAML's ``task`` key ("detection" or "classification") picks the schema from ``CONFIG_SCHEMAS``
unless ``schema=`` is given. An unknown key or a value of the wrong type raises ``ValueError`` naming the
key (and the file) and suggesting the closest valid key. ``save_config`` writes YAML that
``load_config`` reads back into an equal object.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from detres.utils.io import atomic_write

logger = logging.getLogger("detres")

__all__ = [
    "BackboneConfig", "PoolerConfig", "ShapesConfig", "RPNConfig", "RoIConfig", "ModelConfig", "DataConfig",
    "SolverConfig", "FastConfig", "TestConfig", "DetConfig",
    "ClsModelConfig", "ClsDataConfig", "ClsSolverConfig", "ClsTestConfig", "ClsConfig",
    "CONFIG_SCHEMAS", "load_config", "save_config", "config_to_dict", "config_from_dict",
    "list_config_keys", "apply_overrides", "validate_config",
]


# --------------------------------------------------------------------------------------------------
# Detection schema
# --------------------------------------------------------------------------------------------------
def _opt(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, lo: float | None = None,
         hi: float | str | None = None, lo_open: bool = False, hi_open: bool = False, choices: tuple | None = None,
         sizes: bool = False, why: str = "") -> Any:
    """A model field with its rule, written once: :func:`field_problem` checks it for the config (model.*
    keys) and for :mod:`detres.modeling.spec`, whose part specs are made from these dataclasses. ``hi`` may
    name another field of the section (``bg_iou_thresh`` at most ``fg_iou_thresh``); ``sizes``: a non-empty
    list of positive numbers; ``why``: what the value is, said in an error."""
    rule = dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices, sizes=sizes, why=why)
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


_IOU_WHY, _BETA_WHY = "an IoU", "the smooth L1 transition point; 0 = plain L1"


@dataclass
class BackboneConfig:
    name: str = "resnet50"  # one of detres.backbones.list_backbones(): resnet18/34/50/101/152, vgg16
    weights: Optional[str] = None  # ImageNet weights: a file (torchvision/detres format) or a name (msra:R-101); None = random
    style: Optional[str] = None  # "pytorch" (stride in 3x3) | "msra" (stride in 1x1); None = from weights meta
    norm: str = "frozen_bn"  # frozen_bn (paper: BN statistics fixed when fine-tuning) | bn | syncbn | gn
    freeze_at: int = _opt(2, lo=0, hi=5, why="stages frozen: 0 none .. 5 all")  # freeze conv1 + res2 (stage index < 2), as the paper's Faster R-CNN fine-tuning
    shortcut: str = "B"  # ResNet projection shortcuts: "A" zero-pad, "B" project on dim change (paper default), "C" all
    width: int = _opt(64, lo=1, hi=512, why="channels; the paper's 64, at most 8 times it")  # ResNet channels of conv1 and conv2_x (paper: 64, doubled per stage); smaller for tiny from-scratch models
    caffe_stem_pool: bool = False  # ResNets: pool1 as the MSRA Caffe models (3x3, stride 2, no padding, ceil); False = torchvision's padding 1


@dataclass
class PoolerConfig:
    type: str = _opt("roi_align", choices=("roi_align", "roi_pool"))  # roi_align (torchvision MultiScaleRoIAlign) | roi_pool (the paper's RoI pooling)
    resolution: Optional[int] = _opt(None, lo=1, hi=64, why="the RoI feature size")  # RoI output size; None = 14 for ResNet-C4 (conv5 strides it to 7), 7 for VGG
    sampling_ratio: int = _opt(0, lo=0, hi=64, why="0 is adaptive")  # RoIAlign bilinear samples per bin; 0 = adaptive
    aligned: bool = False  # RoIAlign half-pixel offset (Detectron2 "ROIAlignV2"); False = torchvision default


@dataclass
class RPNConfig:
    anchor_sizes: list[int] = _opt(factory=lambda: [128, 256, 512], sizes=True)  # Faster R-CNN Sec. 3.1.1: 3 scales
    aspect_ratios: list[float] = _opt(factory=lambda: [0.5, 1.0, 2.0], sizes=True)  # Faster R-CNN: 3 ratios 1:2,1:1,2:1
    pre_nms_top_n_train: int = _opt(12000, lo=1, why="proposals kept before NMS")  # py-faster-rcnn RPN_PRE_NMS_TOP_N (train)
    post_nms_top_n_train: int = _opt(2000, lo=1, why="proposals kept after NMS")  # py-faster-rcnn RPN_POST_NMS_TOP_N (train)
    pre_nms_top_n_test: int = _opt(6000, lo=1, why="proposals kept before NMS")  # py-faster-rcnn RPN_PRE_NMS_TOP_N (test)
    post_nms_top_n_test: int = _opt(300, lo=1, why="proposals kept after NMS")  # Faster R-CNN Sec. 4: 300 proposals at test time
    nms_thresh: float = _opt(0.7, lo=0, hi=1, lo_open=True, why=_IOU_WHY)  # Faster R-CNN Sec. 3.3: NMS of proposals at IoU 0.7 (py-faster-rcnn RPN_NMS_THRESH)
    min_size: float = _opt(0.0, lo=0, why="pixels")  # drop proposals smaller than this (px at the ORIGINAL image scale); py-faster-rcnn RPN_MIN_SIZE 16; 0 = torchvision
    fg_iou_thresh: float = _opt(0.7, lo=0, hi=1, why=_IOU_WHY)  # Faster R-CNN Sec. 3.1.2: an anchor is positive at IoU > 0.7 with a box ...
    bg_iou_thresh: float = _opt(0.3, lo=0, hi="fg_iou_thresh", why=_IOU_WHY)  # ... and negative below 0.3 with every box
    allowed_border: float = -1.0  # training: ignore anchors crossing the border by more px than this; py-faster-rcnn 0; < 0 keeps all (torchvision)
    batch_size_per_image: int = _opt(256, lo=1, why="anchors sampled per image")  # Faster R-CNN Sec. 3.1.3: 256 sampled anchors per image ...
    positive_fraction: float = _opt(0.5, lo=0, hi=1, why="a fraction")  # ... with up to 1:1 positives to negatives (Sec. 3.1.3)
    anchor_style: str = _opt("torchvision", choices=("pfr", "torchvision"))  # "pfr": py-faster-rcnn's generate_anchors boxes and proposal order (min size before top-n) | "torchvision"
    smooth_l1_beta: float = _opt(1 / 9, lo=0, why=_BETA_WHY)  # box loss's smooth L1 transition (beta = 1/sigma^2); torchvision's 1/9 = py-faster-rcnn's sigma 3


@dataclass
class RoIConfig:
    batch_size_per_image: int = _opt(128, lo=1, why="RoIs sampled per image")  # RoIs per image (py-faster-rcnn TRAIN.BATCH_SIZE 128) ...
    positive_fraction: float = _opt(0.25, lo=0, hi=1, why="a fraction")  # ... 25% of them foreground (Fast R-CNN Sec. 2.3; py-faster-rcnn FG_FRACTION)
    fg_iou_thresh: float = _opt(0.5, lo=0, hi=1, why=_IOU_WHY)  # foreground RoIs: IoU >= 0.5 with a box (Fast R-CNN Sec. 2.3; py-faster-rcnn FG_THRESH)
    bg_iou_thresh_hi: float = _opt(0.5, lo=0, hi="fg_iou_thresh", why=_IOU_WHY)  # background RoIs: best IoU in [lo, hi) (py-faster-rcnn BG_THRESH_HI 0.5) ...
    bg_iou_thresh_lo: float = _opt(0.0, lo=0, hi="bg_iou_thresh_hi", why=_IOU_WHY)  # ... lo: 0 as torchvision and pfr's end2end/alt_opt configs (faster_rcnn_end2end.yml:9); 0.1 in Fast R-CNN Sec. 2.3 and pfr's unused default (lib/fast_rcnn/config.py:58)
    score_thresh: float = _opt(0.05, lo=0, hi=1, hi_open=True, why="a class probability; 1 or more keeps nothing")  # drop detections scoring below this at test time
    nms_thresh: float = _opt(0.3, lo=0, hi=1, lo_open=True, why=_IOU_WHY)  # per-class NMS at test time (py-faster-rcnn TEST.NMS 0.3)
    detections_per_img: int = _opt(100, lo=1, why="detections kept per image")  # keep at most this many detections per image
    smooth_l1_beta: float = _opt(1 / 9, lo=0, why=_BETA_WHY)  # box loss's smooth L1 transition (beta = 1/sigma^2); torchvision 1/9, py-faster-rcnn 1 (no sigma)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # trunk + conv5 head (C4 layout)
    num_classes: Optional[int] = None  # classes INCLUDING background; None = len(dataset class names) + 1
    pooler: PoolerConfig = field(default_factory=PoolerConfig)  # RoI feature extraction
    rpn: RPNConfig = field(default_factory=RPNConfig)  # region proposal network
    roi: RoIConfig = field(default_factory=RoIConfig)  # box head sampling and post-processing


@dataclass
class ShapesConfig:
    num_train: int = 200  # synthetic training images (data.dataset=shapes only)
    num_test: int = 50  # held-out test images
    image_size: int = 128  # square image side in pixels
    min_objects: int = 1  # shapes per image, lower bound
    max_objects: int = 3  # shapes per image, upper bound
    seed: int = 0  # generator seed (the data set is a pure function of these fields)


@dataclass
class DataConfig:
    dataset: str = "voc"  # voc | coco | shapes (the synthetic VOC-format demo set)
    root: str = ""  # data folder (or a VOC-layout folder of your own); "" = $DETRES_DATA, else ./data
    classes: Optional[list[str]] = None  # class names, label i+1 = classes[i]; null = the data's own (VOC's 20, COCO's categories)
    image_root: str = ""  # COCO JSON given by path: folder of its file_name images; "" = the JSON's own folder
    train: list[str] = field(default_factory=lambda: ["2007_trainval"])  # training splits, concatenated: VOC "<year>_<split>", COCO "train2014"; shapes "trainval"
    test: str = "2007_test"  # evaluation split: VOC "2007_test", COCO "val2014", shapes "test"
    min_size: int = 600  # Faster R-CNN Sec. 3.3: shorter side rescaled to 600 px
    max_size: int = 1000  # Faster R-CNN: longer side capped at 1000 px
    flip_prob: float = 0.5  # horizontal flip during training (py-faster-rcnn USE_FLIPPED)
    color_jitter: bool = False  # photometric jitter (brightness/contrast/saturation/hue) in training; paper: none
    num_workers: int = 2  # DataLoader worker processes per GPU/process
    aspect_ratio_grouping: bool = True  # batch portrait with portrait and landscape with landscape images
    keep_difficult_train: bool = False  # VOC "difficult" objects are excluded from training (py-faster-rcnn)
    coco_crowd: str = "ignore"  # COCO iscrowd boxes in training: ignore (never targets, as torchvision/Detectron) | as_ground_truth (targets like any box: pfr end2end)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # synthetic set, generated under root/shapes if absent


@dataclass
class SolverConfig:
    max_iter: int = 70000  # total iterations (py-faster-rcnn VGG16 VOC07 end-to-end: 70k)
    base_lr: float = 0.001  # learning rate at reference_batch images (py-faster-rcnn VOC07: 0.001)
    momentum: float = 0.9  # SGD momentum (paper)
    momentum_style: str = "pytorch"  # pytorch: buffer of gradients, w -= lr*v | caffe: lr inside the buffer, w -= v (Caffe's SGDSolver, pfr); equal at a constant rate
    weight_decay: float = 0.0001  # L2 weight decay of the weights (Faster R-CNN Sec. 3.1.3 uses 5e-4)
    bias_lr_factor: float = 1.0  # biases learn at this multiple of the lr (py-faster-rcnn prototxts: lr_mult 2)
    weight_decay_bias: Optional[float] = None  # weight decay of biases; None = weight_decay, as pfr (decay_mult 0 only on the frozen conv1_x/conv2_x, models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt lines 22-112)
    ims_per_batch: int = 1  # images per GPU/process and forward pass
    iter_size: int = 1  # passes accumulated per update (Caffe iter_size; pfr VOC: 2); batch_rule accumulate derives it
    reference_batch: int = 1  # total batch (processes x ims_per_batch x iter_size) base_lr was tuned for
    batch_rule: str = "linear_scaling"  # other batches: linear_scaling (lr x total/reference) | accumulate (iter_size fills the reference, lr kept)
    steps: list[int] = field(default_factory=lambda: [50000])  # iterations where lr is multiplied by gamma
    gamma: float = 0.1  # lr decay factor at each step (paper: divide by 10)
    warmup_iters: Optional[int] = None  # linear warmup length; None = auto: a warmup only when the linear scaling rule raises lr above base_lr; 0 = none
    warmup_factor: float = 0.001  # lr multiplier at iteration 0 of the warmup
    warmup_method: str = "linear"  # linear: from warmup_factor up to 1; constant: warmup_factor throughout (ResNet-110, Sec. 4.2)
    checkpoint_period: int = 5000  # save a checkpoint every this many iterations
    clip_grad_norm: Optional[float] = None  # clip the global gradient L2 norm to this value; None = off
    amp: Optional[str] = None  # mixed precision on CUDA: "bf16" | "fp16" | None (fp32)
    log_period: int = 20  # write metrics.jsonl / TensorBoard every this many iterations
    dist_timeout: int = 1800  # seconds a collective waits for the other processes before the run stops naming the rank that did not answer (torch's default)


@dataclass
class FastConfig:
    fold_bn: bool = True  # fold every BatchNorm after a conv into the conv (exact up to rounding)
    channels_last: bool = True  # trunk and per-RoI head in NHWC (oneDNN's native layout)
    freeze: bool = False  # TorchScript-freeze trunk and head (measure per machine: tools/benchmark.py infer)
    roi_chunk: Optional[int] = None  # run the per-RoI head over chunks of this many RoIs; None = all at once
    bf16: bool = False  # bf16 autocast of trunk and head, only on CUDA or a CPU with native bf16 (not exact)
    pool_threads: int = 2  # threads splitting the CPU RoI pooling (identical output); 1 = none
    commute_head: bool = True  # RoIAlign as matrix products with the head's first 1x1 convs before it (CPU, ResNet-50+)
    winograd: bool = True  # F(4x4, 3x3) Winograd for 3x3 convs with >= 128 input channels (CPU; ~1e-5 relative)


@dataclass
class TestConfig:
    eval_period: int = 0  # evaluate every this many iterations (0 = only at the end)
    ims_per_batch: int = 1  # test images per process
    num_vis_images: int = 4  # test images drawn with their detections into the output directory
    vis_thresh: float = 0.5  # pictures (vis/, tools/predict.py) draw detections from this score; results keep all
    has_labels: bool = True  # False: the test split has no public labels (VOC 2012 test): write the server's files, no AP
    fast_inference: bool = True  # evaluate/predict with detres.modeling.prepare_for_inference (same detections, faster)
    fast: FastConfig = field(default_factory=FastConfig)  # the fast path's options (measured on the CPUs here)


@dataclass
class DetConfig:
    task: str = "detection"  # picks this schema in load_config
    model: ModelConfig = field(default_factory=ModelConfig)  # the detector
    data: DataConfig = field(default_factory=DataConfig)  # data sets and transforms
    solver: SolverConfig = field(default_factory=SolverConfig)  # optimiser and schedule
    test: TestConfig = field(default_factory=TestConfig)  # evaluation
    output_dir: str = "output/run"  # run directory: config.yaml, metrics, checkpoints, eval.json, pictures
    seed: int = 0  # global seed (Python, NumPy, torch); each rank adds its rank


# --------------------------------------------------------------------------------------------------
# Classification schema (ImageNet pretraining, ResNet paper Sec. 3.4)
# --------------------------------------------------------------------------------------------------
@dataclass
class ClsModelConfig:
    name: str = "resnet50"  # architecture, see detres.backbones.list_classifiers()
    style: str = "pytorch"  # "pytorch" (stride in 3x3) | "msra" (stride in the first 1x1, as the paper's Caffe models)
    norm: str = "bn"  # batch norm after every conv, before the activation (paper Sec. 3.4)
    num_classes: int = 1000  # ImageNet-1k
    shortcut: str = "B"  # projection shortcuts only when dimensions change (paper option B)
    width: int = _opt(64, lo=1, hi=512, why="channels; the paper's 64, at most 8 times it")  # ResNet channels of conv1 and conv2_x (paper: 64, doubled per stage)
    caffe_stem_pool: bool = False  # ResNets: pool1 as the MSRA Caffe models (as model.backbone.caffe_stem_pool of detection: train on the grid detection uses)


@dataclass
class ClsDataConfig:
    dataset: str = "imagenet"  # imagenet (folders) | cifar10 (official files, Sec. 4.2) | digits (scikit-learn's 8x8, no download)
    root: str = ""  # ImageNet folder (ImageFolder layout) / folder holding cifar-10-batches-*; "" = $DETRES_DATA/<dataset>
    val_size: int = 0  # CIFAR-10: hold out this many training images for evaluation (paper: 5000, the 45k/5k split); 0 = test set
    padding: int = 4  # CIFAR-10: zero padding before the random 32x32 crop (paper: 4)
    train_dir: str = "train"  # training sub-folder of root
    val_dir: str = "val"  # validation sub-folder of root
    min_scale: int = 256  # scale augmentation: shorter side sampled in [256, 480] (paper Sec. 3.4)
    max_scale: int = 480  # upper end of the scale augmentation
    crop: int = 224  # random 224x224 crop (paper)
    pca_lighting: float = 0.1  # AlexNet-style PCA colour augmentation strength (paper cites Krizhevsky et al.)
    num_workers: int = 8  # DataLoader worker processes per GPU/process
    test_resize: int = 256  # shorter side before the centre/ten crops at test time
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # mean subtraction (paper Sec. 3.4): ImageNet RGB mean in [0, 1]
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # the paper subtracts the mean only; BN after conv1 absorbs the scale
    mean_image: bool = False  # subtract the training set's per-pixel mean image (crop x crop, Sec. 3.4) instead of data.mean; stored in the checkpoints
    mean_image_samples: int = 0  # training images averaged into the mean image (a seeded sample); 0 = all


@dataclass
class ClsSolverConfig(SolverConfig):
    max_iter: int = 600000  # paper: training stops at 60e4 iterations
    base_lr: float = 0.1  # paper: starts at 0.1
    weight_decay: float = 0.0001  # paper: 1e-4
    ims_per_batch: int = 32  # images per GPU (8 GPUs x 32 = 256)
    reference_batch: int = 256  # paper: mini-batch 256
    steps: list[int] = field(default_factory=lambda: [150000, 300000, 450000])  # lr_schedule steps: fixed drops at these iterations
    warmup_iters: int = 0  # paper: no warmup for ResNet-50/101/152 (only ResNet-110 on CIFAR used 0.01 first)
    checkpoint_period: int = 10000  # save every this many iterations
    lr_schedule: str = "steps"  # steps: multiply by gamma at solver.steps | plateau: when the training error plateaus (Sec. 3.4), steps must be []
    error_window: int = 1000  # iterations the training error is averaged over (plateau checks and the warmup condition)
    plateau_patience: int = 5  # lr_schedule plateau: windows without improvement before the rate drops
    plateau_threshold: float = 0.01  # lr_schedule plateau: a relative error decrease smaller than this is no improvement
    warmup_until_error: Optional[float] = None  # warmup_factor x the rate until the windowed training error is below this (ResNet-110: 0.8); null = off


@dataclass
class ClsTestConfig:
    eval_period: int = 10000  # evaluate every this many iterations (0 = only at the end)
    ten_crop: bool = True  # paper: standard 10-crop testing for comparison studies (ImageNet only)
    multi_scale: list[int] = field(default_factory=list)  # fully-convolutional test at these shorter sides, scores averaged (Sec. 3.4: [224, 256, 384, 480, 640]); [] = off
    multi_scale_flip: bool = False  # also average the mirrored images (Sec. 3.4 does not say; VGG's dense test does)
    ims_per_batch: int = 32  # test images per process


@dataclass
class ClsConfig:
    task: str = "classification"  # picks this schema in load_config
    model: ClsModelConfig = field(default_factory=ClsModelConfig)  # the classifier
    data: ClsDataConfig = field(default_factory=ClsDataConfig)  # ImageNet data and augmentation
    solver: ClsSolverConfig = field(default_factory=ClsSolverConfig)  # optimiser and schedule
    test: ClsTestConfig = field(default_factory=ClsTestConfig)  # evaluation
    output_dir: str = "output/imagenet"  # run directory
    seed: int = 0  # global seed


CONFIG_SCHEMAS: dict[str, type] = {"detection": DetConfig, "classification": ClsConfig}


# --------------------------------------------------------------------------------------------------
# Type checking / conversion
# --------------------------------------------------------------------------------------------------
def list_config_keys(schema: type | Any) -> list[str]:
    """All dotted leaf keys of a schema class or instance, e.g. ``["model.backbone.name", ...]``."""
    cls = schema if isinstance(schema, type) else type(schema)
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(f"{f.name}.{k}" for k in list_config_keys(tp))
        else:
            keys.append(f.name)
    return keys


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    if not close:
        return ""
    return f"; did you mean '{close[0]}'?"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


#: Largest integer a config key accepts (what a C ``long long`` holds; torch and numpy need no more).
MAX_INT = 2 ** 63 - 1


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (lists, int->float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value in ("None", "null", "~") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ValueError:
                pass
        raise ValueError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ValueError(f"config key '{key}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key '{key}': expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                raise ValueError(f"config key '{key}': {value} is too large for an integer setting "
                                 f"(at most {MAX_INT} in size)")
            return value
        raise ValueError(f"config key '{key}': expected int, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 or isinstance(value, float) else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; it is a number here
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ValueError(f"config key '{key}': expected float, got {value!r}")
        if not math.isfinite(number):  # NaN passes every range check and inf breaks them: refuse both here
            raise ValueError(f"config key '{key}': must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"config key '{key}': expected str, got {value!r}")
    raise ValueError(f"config key '{key}': unsupported annotation {tp!r}")


def _apply_dict(obj: Any, data: dict, prefix: str, all_keys: list[str], source: str) -> None:
    """Set fields of dataclass instance ``obj`` from nested dict ``data`` (in place)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: config key '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k not in names:
            raise ValueError(f"{source}: unknown config key '{full}'{_suggest(str(full), all_keys)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ValueError(f"{source}: config key '{full}' is a section; give sub-keys "
                                 f"(e.g. '{full}.{dataclasses.fields(tp)[0].name}'), got {v!r}")
            _apply_dict(getattr(obj, k), v, f"{full}.", all_keys, source)
        else:
            try:
                setattr(obj, k, _convert(v, tp, full))
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from None


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"override '{item}' must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override '{item}' has an empty key")
    raw = raw.strip()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"override '{key}=...': the value is {len(raw)} characters long (at most {MAX_CONFIG_BYTES})")
    try:
        value = _safe_yaml(raw) if raw != "" else ""
    except _YAMLBoundError as e:
        raise ValueError(f"override '{key}=...': {e}") from None
    except yaml.YAMLError:
        value = raw  # keep as plain string (e.g. paths with ':')
    return key, value


def apply_overrides(cfg: Any, overrides: typing.Iterable[str]) -> Any:
    """Apply ``key.sub=value`` strings (YAML-parsed values) to the config instance in place; returns it."""
    all_keys = list_config_keys(cfg)
    for item in overrides:
        key, value = _parse_override(item)
        if key not in all_keys:
            raise ValueError(f"override '{item}': unknown config key '{key}'{_suggest(key, all_keys)}")
        nested: dict = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        _apply_dict(cfg, nested, "", all_keys, f"override '{item}'")
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Nested plain dict (lists, not tuples) of a config instance; YAML/JSON serialisable."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict, schema: type | None = None, *, source: str = "<dict>") -> Any:
    """Build a schema instance from a nested dict (``task`` picks the schema when ``schema`` is None)."""
    data = dict(data)
    if schema is None:
        task = data.get("task", "detection")
        if task not in CONFIG_SCHEMAS:
            raise ValueError(f"{source}: unknown task '{task}'{_suggest(str(task), list(CONFIG_SCHEMAS))}")
        schema = CONFIG_SCHEMAS[task]
    cfg = schema()
    _apply_dict(cfg, data, "", list_config_keys(schema), source)
    return cfg


#: Bounds checked before a config is parsed or expanded: a config is a few kB of keys, never a data file.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build objects) that also refuses a key given twice in one mapping
    (YAML keeps the last one without a word) and counts aliases (``*name``) as it composes."""

    def __init__(self, stream):
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):  # noqa: D102 - counts aliases, then yaml's own
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_YAML_ALIASES:
                raise _YAMLBoundError(f"more than {MAX_YAML_ALIASES} aliases (*name); a config needs few or none")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: D102 - refuses duplicates, then yaml's own
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise _YAMLBoundError(f"key '{key_node.value}' is given twice, at lines {seen[key_node.value]} "
                                          f"and {line} (YAML would silently keep the second); merge them")
                seen[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


class _YAMLBoundError(ValueError):
    """A config YAML is too big, has too many aliases, expands too far, or repeats a key."""


def _expanded_size(node, memo: dict) -> int:
    """Nodes the document would have with every alias copied out (linear time: shared nodes memoised)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[key] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[key]


def _safe_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_ConfigLoader`, refusing a document that expands past MAX_YAML_NODES
    (an alias "bomb") before it is built. Raises _YAMLBoundError or yaml.YAMLError."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise _YAMLBoundError(f"its aliases expand to {size} values (at most {MAX_YAML_NODES}); a config "
                                  "needs a few hundred")
        return loader.construct_document(node)
    except RecursionError:  # yaml composes nested lists and mappings recursively
        raise _YAMLBoundError("lists or mappings nested too deeply; a config needs a few levels") from None
    finally:
        loader.dispose()


def _decode_config(path: str, raw: bytes) -> str:
    """UTF-8 (a BOM allowed), or UTF-16/32 with their BOM; anything else is refused naming the file."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            break
    else:
        enc = "utf-8"
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file in UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start} cannot be "
                         "decoded); save it as UTF-8") from None


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {size} bytes is too big for a config file (at most {MAX_CONFIG_BYTES}); "
                         "is it the right file?")
    with open(path, "rb") as f:
        text = _decode_config(path, f.read(MAX_CONFIG_BYTES + 1))
    try:
        data = _safe_yaml(text)
    except _YAMLBoundError as e:
        raise ValueError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_with_base(path: str) -> dict:
    """Read a YAML config and merge it over its ``_base_`` file (one level; relative to the file)."""
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path}: '_base_' must be one file path, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(os.path.abspath(path)), base)
    base_data = _read_yaml(base_path)
    if "_base_" in base_data:
        raise ValueError(f"{base_path}: a _base_ file may not have its own '_base_' (one level only)")
    return _deep_merge(base_data, data)


def load_config(path: str | os.PathLike, overrides: typing.Iterable[str] = (), schema: type | None = None, *,
                task: str | None = None, allow_empty: bool = True) -> Any:
    """Load ``path`` (YAML, optional ``_base_``) into a schema instance, then apply ``overrides``.

    The schema is ``schema`` if given, else ``CONFIG_SCHEMAS[yaml["task"]]`` (default "detection").
    ``task``: the task the caller runs; a file whose ``task`` key names another is refused (a tool given the
    other task's config). ``allow_empty=False`` refuses a file without keys (it would run every default).
    Raises ValueError naming the file and key for unknown keys, wrong types, non-finite numbers, a key given
    twice in one mapping, and YAML too big or expanding too far (checked before it is built).
    """
    path = os.fspath(path)
    data = load_yaml_with_base(path)
    if not data and not allow_empty:
        raise ValueError(f"{path}: the config file has no keys, so every setting would be a default "
                         "(VOC 2007 under ./data, output_dir output/run); write the keys you mean (see configs/)")
    tools = {"detection": "tools/train_det.py", "classification": "tools/train_cls.py"}
    if task is not None and "task" in data and data["task"] != task:
        found = data["task"]
        raise ValueError(f"{path}: a {found!r} config (its 'task' key), but this tool runs {task!r} configs"
                         f"{'; use ' + tools[str(found)] if str(found) in tools else ''}")
    try:
        cfg = config_from_dict(data, schema, source=path)
    except ValueError:
        if task is not None and "task" not in data:  # no 'task' key: is it the other task's config?
            for other, other_schema in CONFIG_SCHEMAS.items():
                if other == task:
                    continue
                try:
                    config_from_dict(data, other_schema, source=path)
                except ValueError:
                    continue
                raise ValueError(f"{path}: its keys are those of a {other!r} config, but this tool runs {task!r} "
                                 f"configs; use {tools.get(other, 'the ' + other + ' tool')}") from None
        raise
    return validate_config(apply_overrides(cfg, list(overrides)))


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the full config as YAML (atomically); ``load_config(path)`` gives an equal object back."""
    atomic_write(path, lambda f: yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=None))


# --------------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------------
def _between(lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False):
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    text = f"in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def ok(v: float) -> bool:
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)
    return ok, text


_PROB = _between(0, 1)
_NONNEG = _between(0, None)
_POS_INT = _between(1, None)
_IOU = _between(0, 1)
_NMS = _between(0, 1, lo_open=True)
#: An image side: at most 16384 px (PIL's decompression-bomb limit is ~9500 x 9500), so that no setting asks
#: for an image that cannot be allocated.
_PIXELS = _between(1, 16384)

#: key -> (check, allowed values in words, why). A key missing from a schema is skipped; None (where the
#: type allows it) always passes.
_RULES: dict[str, tuple] = {
    "seed": (*_between(0, 2 ** 31 - 1), "a seed (each rank adds its rank)"),
    "model.num_classes": (*_between(2, None), "classes including the background"),
    "test.vis_thresh": (*_between(0, 1), "a class probability"),
    "data.min_size": (*_PIXELS, "pixels"),
    "data.max_size": (*_PIXELS, "pixels"),
    "data.flip_prob": (*_PROB, "a probability"),
    "data.num_workers": (*_NONNEG, "worker processes"),
    "data.shapes.num_train": (*_POS_INT, "images"),
    "data.shapes.num_test": (*_POS_INT, "images"),
    "data.shapes.image_size": (*_between(16, 4096), "pixels of a synthetic square image"),
    "data.shapes.min_objects": (*_NONNEG, "objects per image"),
    "data.shapes.max_objects": (*_POS_INT, "objects per image"),
    "data.min_scale": (*_PIXELS, "pixels"),
    "data.max_scale": (*_PIXELS, "pixels"),
    "data.crop": (*_PIXELS, "pixels"),
    "data.test_resize": (*_PIXELS, "pixels"),
    "data.pca_lighting": (*_NONNEG, "a noise strength"),
    "data.val_size": (*_NONNEG, "images"),
    "data.padding": (*_NONNEG, "pixels"),
    "data.mean_image_samples": (*_NONNEG, "images; 0 = the whole training set"),
    "solver.max_iter": (*_POS_INT, "iterations"),
    "solver.base_lr": (*_NONNEG, "a learning rate"),
    "solver.momentum": (*_between(0, 1, hi_open=True), "SGD momentum"),
    "solver.weight_decay": (*_NONNEG, "an L2 factor"),
    "solver.bias_lr_factor": (*_NONNEG, "a multiple of the learning rate"),
    "solver.weight_decay_bias": (*_NONNEG, "an L2 factor"),
    "solver.ims_per_batch": (*_POS_INT, "images per process"),
    "solver.iter_size": (*_POS_INT, "batches per update"),
    "solver.reference_batch": (*_POS_INT, "images"),
    "solver.gamma": (*_between(0, 1, lo_open=True), "the learning rate is multiplied by it at each step"),
    "solver.warmup_iters": (*_NONNEG, "iterations"),
    "solver.warmup_factor": (*_between(0, 1, lo_open=True), "the warmup's starting fraction of the rate"),
    "solver.checkpoint_period": (*_NONNEG, "iterations; 0 = only the final checkpoint"),
    "solver.clip_grad_norm": (*_between(0, None, lo_open=True), "a gradient norm; null = no clipping"),
    "solver.log_period": (*_NONNEG, "iterations"),
    "solver.error_window": (*_POS_INT, "iterations"),
    "solver.plateau_patience": (*_NONNEG, "error windows"),
    "solver.plateau_threshold": (*_between(0, 1, hi_open=True), "a relative error decrease"),
    "solver.warmup_until_error": (*_between(0, 1, lo_open=True), "a training error"),
    "test.eval_period": (*_NONNEG, "iterations; 0 = only at the end"),
    "test.ims_per_batch": (*_POS_INT, "images per process"),
    "test.num_vis_images": (*_NONNEG, "images"),
    "test.fast.roi_chunk": (*_POS_INT, "RoIs per chunk of the head; null = all at once"),
    "test.fast.pool_threads": (*_POS_INT, "threads; 1 = no splitting"),
}


def _get(cfg: Any, key: str) -> tuple[bool, Any]:
    obj = cfg
    for part in key.split("."):
        if not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


def _refuse(key: str, what: str, value: Any) -> ValueError:
    return ValueError(f"config key '{key}': {what}, got {value!r}")


def _interval(rule: dict, hi: float | None) -> str:
    lo = rule["lo"]
    return (f"{'(' if rule['lo_open'] else '['}{'-inf' if lo is None else f'{lo:g}'}, "
            f"{'inf' if hi is None else f'{hi:g}'}{')' if rule['hi_open'] else ']'}")


def field_problem(section: Any, name: str) -> str | None:
    """What is wrong with field ``name`` of a dataclass instance by its :func:`_opt` rule ("must be in [0, 5],
    got 6 (why)"), or None (also for a field without a rule, and for None values). The one check of a model
    option: the config and :mod:`detres.modeling.spec` both call it."""
    rule, value = _field_rule(section, name), getattr(section, name)
    if rule is None or value is None:
        return None
    why = f" ({rule['why']})" if rule["why"] else ""
    if rule["choices"] is not None:
        return None if value in rule["choices"] else f"must be one of {list(rule['choices'])}, got {value!r}"
    if rule["sizes"]:
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
        return None if ok else f"must be a non-empty list of positive numbers, got {value!r}"
    hi = getattr(section, rule["hi"]) if isinstance(rule["hi"], str) else rule["hi"]
    ok, _ = _between(rule["lo"], hi, lo_open=rule["lo_open"], hi_open=rule["hi_open"])
    if isinstance(rule["hi"], str):
        why = f" ({rule['why'] + ', ' if rule['why'] else ''}at most {rule['hi']})"
    return None if ok(value) else f"must be in {_interval(rule, hi)}, got {value!r}{why}"


def _field_rule(section: Any, name: str) -> dict | None:
    return next((f.metadata.get("rule") for f in dataclasses.fields(section) if f.name == name), None)


def _ruled_sections(obj: Any, prefix: str) -> typing.Iterator[tuple[str, Any]]:
    """(dotted prefix, dataclass instance) of ``obj`` and every section below it."""
    yield prefix, obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _ruled_sections(value, f"{prefix}{f.name}.")


def convert_value(value: Any, annotation: Any) -> Any:
    """``value`` checked against a config annotation and converted as YAML values are (int -> float, tuples
    -> lists); ValueError with the reason alone ("expected int, got '3'"). For specs built in Python."""
    try:
        return _convert(value, annotation, "")
    except ValueError as e:
        raise ValueError(str(e).split("': ", 1)[-1]) from None


def validate_config(cfg: Any) -> Any:
    """Check every numeric value against its allowed range and the rules that tie values together (steps
    increasing and below ``max_iter``, ``max_size >= min_size``, IoU ranges ordered, ...). Raises
    ValueError naming the key, the allowed range and the value; returns ``cfg``."""
    for key, (ok, allowed, why) in _RULES.items():
        present, value = _get(cfg, key)
        if present and value is not None and not ok(value):
            raise _refuse(key, f"must be {allowed} ({why})", value)
    s = getattr(cfg, "solver", None)
    if s is not None:
        steps = list(s.steps)
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise _refuse("solver.steps", "must be strictly increasing", steps)
        if steps and steps[0] < 1:
            raise _refuse("solver.steps", "must be iterations >= 1", steps)
        late = [x for x in steps if x >= s.max_iter]
        if late:  # as detectron2: a schedule shortened by max_iter alone keeps working
            logger.warning("config key 'solver.steps': %s at or past solver.max_iter=%d never take effect and are "
                           "dropped", late, s.max_iter)
            s.steps = [x for x in steps if x < s.max_iter]
        if s.amp not in (None, "bf16", "fp16"):
            raise _refuse("solver.amp", "must be bf16, fp16 or null", s.amp)
        if s.warmup_method not in ("linear", "constant"):
            raise _refuse("solver.warmup_method", "must be linear or constant", s.warmup_method)
        if s.momentum_style not in ("pytorch", "caffe"):
            raise _refuse("solver.momentum_style", "must be pytorch or caffe", s.momentum_style)
    for key, section in _ruled_sections(cfg, ""):
        for f in dataclasses.fields(section):
            reason = field_problem(section, f.name)
            if reason is not None:
                raise ValueError(f"config key '{key}{f.name}': {reason}")
    d = getattr(cfg, "data", None)
    for lo_key, hi_key in (("min_size", "max_size"), ("min_scale", "max_scale")):
        if d is not None and hasattr(d, lo_key) and getattr(d, hi_key) < getattr(d, lo_key):
            raise _refuse(f"data.{hi_key}", f"must be >= data.{lo_key}={getattr(d, lo_key)}", getattr(d, hi_key))
    shapes = getattr(d, "shapes", None)
    if shapes is not None and shapes.max_objects < shapes.min_objects:
        raise _refuse("data.shapes.max_objects", f"must be >= data.shapes.min_objects={shapes.min_objects}",
                      shapes.max_objects)
    if d is not None and getattr(d, "coco_crowd", "ignore") not in ("ignore", "as_ground_truth"):
        raise _refuse("data.coco_crowd", "must be ignore or as_ground_truth", d.coco_crowd)
    if d is not None and hasattr(d, "train") and not d.train:
        raise _refuse("data.train", "must name at least one training split", d.train)
    classes = getattr(d, "classes", None)
    if classes is not None and (not classes or len(set(classes)) != len(classes) or not all(c.strip() for c in classes)):
        raise _refuse("data.classes", "must be a list of distinct, non-empty class names (or null)", classes)
    return cfg
