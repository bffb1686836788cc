"""The paper's Faster R-CNN (Appendix A) as torchvision's own FasterRCNN class.

The path of one image through `build_detector(spec, num_classes)` (spec: :mod:`detres.modeling.spec`):
1. `InputTransform`: RGB [0, 1] -> the preprocessing the weights were trained with (channel order,
   range, mean/std), then batching with zero padding. No resizing by default: the data pipeline has
   already resized to a shorter side of 600 (max 1000), so it happens in one place only.
2. The C4 trunk (conv1..conv4, stride 16) -> {"res4": map} ({"conv5": map} for VGG-16).
3. torchvision's RPN on that one map: 3 scales x 3 ratios of anchors by default (torchvision's anchors, or
   py-faster-rcnn's with ``rpn.anchor_style="pfr"``, see :mod:`detres.modeling.rcnn`).
4.-5. The RoI head, one module (:class:`~detres.modeling.roi_head.C4RoIHead`): `C4RoIPooler` (RoIAlign or
   RoIPool of each proposal from the stride-16 map, 14x14 for ResNets, 7x7 for VGG-16, the scale taken from
   the trunk's declared stride), conv5 + global average pooling (ResNets) or fc6/fc7 (VGG-16), torchvision's
   FastRCNNPredictor (class scores, 0 = background, and per-class boxes), sampling and losses.
6. With ``original_sizes`` (each image's size before the data pipeline resized it), the boxes are mapped
   back to the original image's pixels inside the forward, and the RPN's minimum proposal side is taken at
   that scale: the model owns its input's scale, as torchvision's ``GeneralizedRCNN.forward`` keeps
   ``original_image_sizes``, so evaluation, the fast path and the exported files compute the same thing.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator

from detres.backbones import build_c4, c4_feature_name
from detres.modeling.rcnn import PaperRPN, PfrAnchorGenerator, as_float64
from detres.modeling.roi_head import C4RoIHead, C4RoIPooler
from detres.modeling.tv_private import GeneralizedRCNNTransform, RPNHead
from detres.modeling.spec import DetectorSpec, RoISpec, RPNSpec


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


Size = tuple  # (height, width): ints, or 0-dim tensors (int64 from the data pipeline; traced sizes when exporting)


class C4FasterRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` made of detres's four parts, whose forward also takes the images'
    ORIGINAL sizes.

    Built through FasterRCNN's public constructor (backbone, anchors, RPN head, box head and predictor), then
    its RPN, RoI heads and transform are replaced by detres's (:class:`~detres.modeling.rcnn.PaperRPN`,
    :class:`~detres.modeling.roi_head.C4RoIHead`, :class:`InputTransform`): the module
    names and state-dict keys are torchvision's.

    ``forward(images, targets=None, original_sizes=None)``: images are float RGB ``[3, h, w]`` in [0, 1].
    ``original_sizes`` gives each image's ``(H0, W0)`` before the data pipeline resized it (ints or int64
    tensors ``[2]``). Each image's scale ``h / H0`` (the height's, py-faster-rcnn's single ``im_scale``)
    sets the RPN's minimum proposal side ``spec.rpn.min_size * h / H0`` in input pixels; without
    ``original_sizes`` it is read from the targets' ``orig_size`` (the data pipeline's, training) or is 1.
    Eval output: per image ``{"boxes" [D, 4] xyxy, "labels" [D], "scores" [D]}``, boxes in the ORIGINAL
    image's pixels when ``original_sizes`` is given (x times ``W0 / w``, y times ``H0 / h``, the ratio
    rounded once to float32), else in the input's. Training: the four losses.
    """

    def __init__(self, backbone: nn.Module, rpn: PaperRPN, roi_heads: C4RoIHead, transform: "InputTransform"):
        super().__init__(backbone, rpn_anchor_generator=rpn.anchor_generator, rpn_head=rpn.head,
                         box_head=roi_heads.box_head, box_predictor=roi_heads.box_predictor)
        self.rpn, self.roi_heads, self.transform = rpn, roi_heads, transform

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                original_sizes: Sequence[Size] | None = None):
        if self.training:
            _check_targets(targets)
        if original_sizes is not None and len(original_sizes) != len(images):
            raise ValueError(f"original_sizes: {len(original_sizes)} sizes for {len(images)} images")
        input_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        originals = _original_sizes(original_sizes, targets, input_sizes)
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets, original_image_sizes=originals)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        detections = self.transform.postprocess(detections, image_list.image_sizes, input_sizes)
        if original_sizes is not None:
            for det, size, original in zip(detections, input_sizes, original_sizes):
                det["boxes"] = boxes_to_original(det["boxes"], size, original)
        return detections


def _check_targets(targets: list[dict[str, Tensor]] | None) -> None:
    """Training targets: present, ``boxes`` float [N, 4] with positive sides (torchvision's own checks)."""
    if targets is None:
        raise ValueError("targets should not be None in training")
    for i, t in enumerate(targets):
        boxes = t["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: boxes must be [N, 4], got {tuple(boxes.shape)}")
        if (boxes[:, 2:] <= boxes[:, :2]).any():
            raise ValueError(f"target {i}: all boxes must have a positive height and width")


def _original_sizes(given: Sequence[Size] | None, targets: list[dict[str, Tensor]] | None,
                    input_sizes: list[Size]) -> list[Size]:
    """Each image's ``(H0, W0)``: ``given``, else its target's ``orig_size``, else its input size (scale 1)."""
    if given is not None:
        return [(s[0], s[1]) for s in given]
    if targets is None:
        return list(input_sizes)
    return [(t["orig_size"][0], t["orig_size"][1]) if "orig_size" in t else size
            for t, size in zip(targets, input_sizes)]


def boxes_to_original(boxes: Tensor, size: Size, original: Size) -> Tensor:
    """xyxy boxes [N, 4] in an image of ``size`` (h, w) -> in the original image of ``original`` (H0, W0):
    x times ``W0 / w``, y times ``H0 / h``, each ratio computed in float64 and rounded once to float32 (what
    multiplying a float32 tensor by the Python number ``W0 / w`` does), so that eager and traced agree."""
    rw = as_float64(original[1]) / as_float64(size[1])
    rh = as_float64(original[0]) / as_float64(size[0])
    ratios = torch.stack([rw, rh, rw, rh]).to(device=boxes.device, dtype=torch.float32)
    return boxes.float() * ratios


def build_detector(spec: DetectorSpec, num_classes: int, *,
                   weights_meta: dict[str, Any] | None = None) -> C4FasterRCNN:
    """The C4 Faster R-CNN that ``spec`` describes, returned as torchvision's `FasterRCNN` class.

    spec: a :class:`~detres.modeling.spec.DetectorSpec` (``DetectorSpec()`` = the paper's settings, see
    :class:`detres.config.ModelConfig` where each one's source is cited); it has checked itself.
    num_classes counts the background (K object classes -> K + 1; label 0 is background).
    weights_meta: with no ``spec.backbone.weights``, the preprocessing/style/BN eps to build for; pass a
    detector checkpoint's "meta" here before loading its state dict, so the two cannot disagree.

    Input: list of float RGB images [3, H, W] in [0, 1]. Training: model(images, targets) -> dict of
    losses (`loss_objectness`, `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg`); eval:
    model(images, original_sizes=...) -> per image {"boxes": [D, 4] xyxy pixels, "labels": [D], "scores": [D]}
    (see :class:`C4FasterRCNN` for the original sizes: they set the scale of ``spec.rpn.min_size`` and the
    boxes' pixels).
    The module names (``backbone``, ``rpn.head``, ``roi_heads.box_head``, ``roi_heads.box_predictor``) are
    torchvision's, so its checkpoints' keys apply.
    """
    if not isinstance(spec, DetectorSpec):
        raise ValueError(f"spec must be a DetectorSpec, got {type(spec).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be an int >= 2, got {num_classes!r}")
    b = spec.backbone
    trunk, head = build_c4(b.name, weights=b.weights, style=b.style, norm=b.norm, freeze_at=b.freeze_at,
                           shortcut=b.shortcut, weights_meta=weights_meta, width=b.width,
                           caffe_stem_pool=b.caffe_stem_pool)
    feature = c4_feature_name(b.name)
    anchor_class = PfrAnchorGenerator if spec.rpn.anchor_style == "pfr" else AnchorGenerator
    anchors = anchor_class(sizes=(spec.rpn.anchor_sizes,), aspect_ratios=(spec.rpn.aspect_ratios,))
    rpn_head = RPNHead(trunk.feature_specs[feature].channels, anchors.num_anchors_per_location()[0])
    pool = C4RoIPooler(kind=spec.pooler.type, feature=feature, stride=trunk.feature_specs[feature].stride,
                       output_size=spec.pool_size, sampling_ratio=spec.pooler.sampling_ratio,
                       aligned=spec.pooler.aligned)
    roi_heads = _build_roi_heads(spec.roi, pool, head, num_classes)  # predictor init: after the RPN head
    transform = InputTransform(trunk.weights_meta, min_size=spec.input.min_size, max_size=spec.input.max_size)
    model = C4FasterRCNN(trunk, _build_rpn(spec.rpn, anchors, rpn_head), roi_heads, transform)
    model.weights_meta = dict(trunk.weights_meta)
    return model


def _build_rpn(r: RPNSpec, anchors: AnchorGenerator, head: RPNHead) -> PaperRPN:
    return PaperRPN(
        anchors, head, fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        pre_nms_top_n=dict(training=r.pre_nms_top_n_train, testing=r.pre_nms_top_n_test),
        post_nms_top_n=dict(training=r.post_nms_top_n_train, testing=r.post_nms_top_n_test),
        nms_thresh=r.nms_thresh, allowed_border=r.allowed_border, min_size_original=r.min_size,
        proposal_order=r.anchor_style, smooth_l1_beta=r.smooth_l1_beta)


def _build_roi_heads(r: RoISpec, pool: C4RoIPooler, head: nn.Module, num_classes: int) -> C4RoIHead:
    return C4RoIHead(
        pool, head, num_classes, fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh_hi=r.bg_iou_thresh_hi,
        bg_iou_thresh_lo=r.bg_iou_thresh_lo, batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction, smooth_l1_beta=r.smooth_l1_beta, score_thresh=r.score_thresh,
        nms_thresh=r.nms_thresh, detections_per_img=r.detections_per_img)
