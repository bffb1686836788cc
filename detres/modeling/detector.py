"""The paper's Faster R-CNN (Appendix A) as torchvision's own FasterRCNN class.

The path of one image through `build_detector(...)`:
1. `InputTransform`: RGB [0, 1] -> the preprocessing the weights were trained with (channel order,
   range, mean/std), then batching with zero padding. No resizing by default: the data pipeline has
   already resized to a shorter side of 600 (max 1000), so it happens in one place only.
2. The C4 trunk (conv1..conv4, stride 16) -> {"res4": map} ({"conv5": map} for VGG-16).
3. torchvision's RPN on that one map: 3 scales x 3 ratios of anchors by default.
4. `C4RoIPooler`: RoIAlign or RoIPool of each proposal from the stride-16 map (14x14 for ResNets,
   7x7 for VGG-16), with the scale taken from the trunk's declared stride.
5. The head: conv5 + global average pooling (ResNets) or fc6/fc7 (VGG-16), then torchvision's
   FastRCNNPredictor (class scores, 0 = background, and per-class boxes).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import roi_align, roi_pool

from detres.modeling.rcnn import PaperRoIHeads, PaperRPN
from detres.backbones import build_c4, c4_feature_name, default_pool_size
from detres.config import DataConfig, ModelConfig

POOLERS = ("roi_align", "roi_pool")

#: The paper's detector settings; the defaults of build_detector are read from here, not written twice.
_PAPER = ModelConfig()


class InputTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with the weights' preprocessing.

    Input images are float RGB in [0, 1] (torchvision's convention). They are reordered to
    `channel_order`, scaled by `input_range` and normalised by `mean`/`std`, all taken from the weights'
    metadata. With `min_size=None` images are not resized (boxes stay in input pixels).
    """

    def __init__(self, meta: dict[str, Any], *, min_size: int | Sequence[int] | None, max_size: int,
                 size_divisible: int = 32):
        super().__init__(min_size if min_size is not None else 0, max_size, list(meta["mean"]),
                         list(meta["std"]), size_divisible=size_divisible)
        self.resize_images = min_size is not None
        self.bgr = meta["channel_order"] == "BGR"
        self.input_range = float(meta["input_range"])

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise ValueError(f"images must be float RGB in [0, 1], got dtype {image.dtype}")
        if image.shape[0] != 3:
            raise ValueError(f"images must be [3, H, W], got {tuple(image.shape)}")
        if self.bgr:
            image = image.flip(0)
        if self.input_range != 1.0:
            image = image * self.input_range
        return super().normalize(image)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if not self.resize_images:
            return image, target
        return super().resize(image, target)

    def __repr__(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        size = f"resize min_size={self.min_size}, max_size={self.max_size}" if self.resize_images else "no resize"
        return (f"{type(self).__name__}({order} x {self.input_range:g}, mean={self.image_mean}, "
                f"std={self.image_std}, {size}, size_divisible={self.size_divisible})")


class C4RoIPooler(nn.Module):
    """Pools every proposal from the single stride-16 map: [R, C, out, out].

    Same call signature as torchvision's MultiScaleRoIAlign (features dict, proposals, image sizes),
    but the spatial scale comes from the trunk's declared stride rather than being guessed from map
    sizes. Proposals are cast to the features' dtype, so RoIAlign/RoIPool work under AMP.
    """

    def __init__(self, *, kind: str, feature: str, stride: int, output_size: int, sampling_ratio: int = 0,
                 aligned: bool = False):
        super().__init__()
        if kind not in POOLERS:
            raise ValueError(f"unknown pooler {kind!r}; choose from {list(POOLERS)}")
        self.kind, self.feature, self.output_size = kind, feature, output_size
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]] | None = None) -> Tensor:
        x = features[self.feature]
        boxes = [p.to(x.dtype) for p in proposals]
        size = (self.output_size, self.output_size)
        if self.kind == "roi_pool":
            return roi_pool(x, boxes, size, self.spatial_scale)
        return roi_align(x, boxes, size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, feature={self.feature}, output_size={self.output_size}, "
                f"spatial_scale={self.spatial_scale}, aligned={self.aligned}")


def build_detector(
    *,
    backbone: str = _PAPER.backbone.name,
    num_classes: int,
    weights: str | os.PathLike | None = _PAPER.backbone.weights,
    style: str | None = _PAPER.backbone.style,
    norm: str = _PAPER.backbone.norm,
    freeze_at: int = _PAPER.backbone.freeze_at,
    shortcut: str = _PAPER.backbone.shortcut,
    width: int = _PAPER.backbone.width,
    pooler: str = _PAPER.pooler.type,
    pooler_resolution: int | None = _PAPER.pooler.resolution,
    pooler_sampling_ratio: int = _PAPER.pooler.sampling_ratio,
    pooler_aligned: bool = _PAPER.pooler.aligned,
    anchor_sizes: Sequence[float] = tuple(_PAPER.rpn.anchor_sizes),
    aspect_ratios: Sequence[float] = tuple(_PAPER.rpn.aspect_ratios),
    rpn_pre_nms_top_n_train: int = _PAPER.rpn.pre_nms_top_n_train,
    rpn_pre_nms_top_n_test: int = _PAPER.rpn.pre_nms_top_n_test,
    rpn_post_nms_top_n_train: int = _PAPER.rpn.post_nms_top_n_train,
    rpn_post_nms_top_n_test: int = _PAPER.rpn.post_nms_top_n_test,
    rpn_nms_thresh: float = _PAPER.rpn.nms_thresh,
    rpn_min_size: float = _PAPER.rpn.min_size,
    rpn_fg_iou_thresh: float = _PAPER.rpn.fg_iou_thresh,
    rpn_bg_iou_thresh: float = _PAPER.rpn.bg_iou_thresh,
    rpn_allowed_border: float = _PAPER.rpn.allowed_border,
    rpn_batch_size_per_image: int = _PAPER.rpn.batch_size_per_image,
    rpn_positive_fraction: float = _PAPER.rpn.positive_fraction,
    box_batch_size_per_image: int = _PAPER.roi.batch_size_per_image,
    box_positive_fraction: float = _PAPER.roi.positive_fraction,
    box_fg_iou_thresh: float = _PAPER.roi.fg_iou_thresh,
    box_bg_iou_thresh_hi: float = _PAPER.roi.bg_iou_thresh_hi,
    box_bg_iou_thresh_lo: float = _PAPER.roi.bg_iou_thresh_lo,
    box_score_thresh: float = _PAPER.roi.score_thresh,
    box_nms_thresh: float = _PAPER.roi.nms_thresh,
    detections_per_img: int = _PAPER.roi.detections_per_img,
    min_size: int | Sequence[int] | None = None,
    max_size: int = DataConfig().max_size,
    weights_meta: dict[str, Any] | None = None,
) -> FasterRCNN:
    """A C4 Faster R-CNN, returned as torchvision's `FasterRCNN` class.

    num_classes counts the background (K object classes -> K + 1; label 0 is background).
    The defaults are the paper's settings, read from :class:`detres.config.ModelConfig` (where each
    one's source is cited): Faster R-CNN as the ResNet paper uses it, anchors 128/256/512 x 0.5/1/2,
    RPN NMS 0.7 with 12000/2000 proposals before/after NMS in training and 6000/300 at test, 256
    anchors and 128 RoIs (25% foreground) per image, test NMS 0.3.
    style: None takes the weights' style ("pytorch" without weights); a conflicting request is an error.
    pooler_resolution: None gives the paper's 14 (ResNet, before conv5) or 7 (VGG-16, before fc6).
    min_size: None means images arrive already resized (detres's data pipeline does it); an int (or
    a tuple, for random choice in training) makes the model resize like torchvision's detectors.
    weights_meta: with no `weights`, the preprocessing/style/BN eps to build for; pass a detector
    checkpoint's "meta" here before loading its state dict, so the two cannot disagree.

    Input: list of float RGB images [3, H, W] in [0, 1]. Training: model(images, targets) -> dict of
    losses (`loss_objectness`, `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg`); eval:
    model(images) -> per image {"boxes": [D, 4] xyxy pixels, "labels": [D], "scores": [D]}.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    if pooler not in POOLERS:
        raise ValueError(f"unknown pooler {pooler!r}; choose from {list(POOLERS)}")
    if not anchor_sizes or not aspect_ratios:
        raise ValueError("anchor_sizes and aspect_ratios must not be empty")
    resolution = pooler_resolution or default_pool_size(backbone)
    if backbone == "vgg16" and resolution != 7:
        raise ValueError(f"vgg16's fc6 takes 7x7 RoI features; pooler_resolution={resolution} cannot be used")
    trunk, head = build_c4(backbone, weights=weights, style=style, norm=norm, freeze_at=freeze_at,
                           shortcut=shortcut, weights_meta=weights_meta, width=width)
    feature = c4_feature_name(backbone)
    spec = trunk.feature_specs[feature]
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    rpn = PaperRPN(
        anchors, RPNHead(spec.channels, anchors.num_anchors_per_location()[0]),
        rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
        dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
        dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
        rpn_nms_thresh, allowed_border=rpn_allowed_border, min_size_original=rpn_min_size)
    predictor = FastRCNNPredictor(head.out_channels, num_classes)
    pool = C4RoIPooler(kind=pooler, feature=feature, stride=spec.stride, output_size=resolution,
                       sampling_ratio=pooler_sampling_ratio, aligned=pooler_aligned)
    roi_heads = PaperRoIHeads(
        pool, head, predictor, box_fg_iou_thresh, box_bg_iou_thresh_hi, box_batch_size_per_image,
        box_positive_fraction, None, box_score_thresh, box_nms_thresh, detections_per_img,
        bg_iou_thresh_lo=box_bg_iou_thresh_lo)
    # torchvision's own FasterRCNN class; its constructor only takes its own RPN, RoIHeads (with
    # MultiScaleRoIAlign) and transform, so the paper's versions are put in place right after.
    model = FasterRCNN(trunk, num_classes=None, rpn_anchor_generator=anchors, rpn_head=rpn.head, box_head=head,
                       box_predictor=predictor)
    model.rpn, model.roi_heads = rpn, roi_heads
    # Faster R-CNN's initialisation of the two sibling layers (Gaussian std 0.01 / 0.001, zero bias).
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    model.transform = InputTransform(trunk.weights_meta, min_size=min_size, max_size=max_size)
    model.weights_meta = dict(trunk.weights_meta)
    return model
