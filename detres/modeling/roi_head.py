"""The C4 RoI head as one module: pooler, per-RoI network, predictor, proposal sampling, losses, fast path.

:class:`C4RoIHead` is what torchvision's ``FasterRCNN`` holds as ``roi_heads`` (it subclasses torchvision's
``RoIHeads``, so the submodule names and state-dict keys stay ``roi_heads.box_roi_pool`` (no weights),
``roi_heads.box_head.*`` and ``roi_heads.box_predictor.*``, and checkpoints of earlier versions load as they are).
It owns, as detectron2's ``Res5ROIHeads`` does (detectron2/modeling/roi_heads/roi_heads.py, class
Res5ROIHeads):

- ``box_roi_pool`` (:class:`C4RoIPooler`): RoIAlign / RoIPool of each proposal from the one stride-16 map.
- ``box_head``: the per-RoI network the backbone's ``build_c4`` split off: conv5 + global average pooling
  (ResNets, ``ResNetC4Head``) or fc6/fc7 (VGG-16, ``VGG16FCHead``): ``[R, C, S, S] -> [R, D]``.
- ``box_predictor``: torchvision's ``FastRCNNPredictor`` (class scores, 0 = background; per-class boxes),
  made here with Faster R-CNN's initialisation.
- training: torchvision's proposal sampling with ``bg_iou_thresh_lo`` (see :mod:`detres.modeling.rcnn`) and
  :func:`~detres.modeling.rcnn.fast_rcnn_losses` at ``smooth_l1_beta``; inference: torchvision's
  ``postprocess_detections``.
- the fast path's head options (:meth:`C4RoIHead.commute_first_block`, :meth:`C4RoIHead.set_fast`): they
  change how this module computes its box features (RoI chunks, pooling threads, NHWC, bf16), never by
  wrapping its submodules in copies.

The range of each setting is checked once, by the config's rules (``config.field_problem``, through
:class:`~detres.modeling.spec.DetectorSpec`); the constructor takes them as given.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import box_iou, roi_align, roi_pool

from detres.modeling.rcnn import fast_rcnn_losses
from detres.modeling.roi_algebra import CommutedC4Block
from detres.modeling.spec import POOLERS
from detres.modeling.tv_private import RoIHeads
from detres.utils.amp import autocast

__all__ = ["C4RoIPooler", "C4RoIHead"]


class C4RoIPooler(nn.Module):
    """Pools every proposal from the single stride-16 map: [R, C, out, out].

    Same call signature as torchvision's MultiScaleRoIAlign (features dict, proposals, image sizes),
    but the spatial scale comes from the trunk's declared stride rather than being guessed from map
    sizes. Proposals are cast to the features' dtype, so RoIAlign/RoIPool work under AMP.
    """

    def __init__(self, *, kind: str, feature: str, stride: int, output_size: int, sampling_ratio: int, aligned: bool):
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


def paper_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's predictor with Faster R-CNN's initialisation of the two sibling layers (Gaussian std
    0.01 for the scores, 0.001 for the boxes, zero bias)."""
    predictor = FastRCNNPredictor(in_channels, num_classes)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    return predictor


class C4RoIHead(RoIHeads):
    """The C4 detector's whole RoI head (see the module docstring).

    ``C4RoIHead(pooler, box_head, num_classes, *, fg_iou_thresh, bg_iou_thresh_hi, bg_iou_thresh_lo,
    batch_size_per_image, positive_fraction, smooth_l1_beta, score_thresh, nms_thresh, detections_per_img)``:
    ``box_head`` maps pooled RoIs ``[R, C, S, S]`` to ``[R, box_head.out_channels]``; ``num_classes`` counts the
    background. ``forward(features, proposals [P_i, 4] xyxy input pixels, image_shapes, targets=None)``:
    inference -> per image ``{"boxes" [D, 4], "labels" [D], "scores" [D]}`` in input pixels; training ->
    ``([], {"loss_classifier", "loss_box_reg"})`` on the sampled proposals (ground truth appended, as
    torchvision does).
    """

    def __init__(self, pooler: C4RoIPooler, box_head: nn.Module, num_classes: int, *, fg_iou_thresh: float,
                 bg_iou_thresh_hi: float, bg_iou_thresh_lo: float, batch_size_per_image: int,
                 positive_fraction: float, smooth_l1_beta: float, score_thresh: float, nms_thresh: float,
                 detections_per_img: int) -> None:
        super().__init__(pooler, box_head, paper_predictor(box_head.out_channels, num_classes),
                         fg_iou_thresh, bg_iou_thresh_hi, batch_size_per_image, positive_fraction, None,
                         score_thresh, nms_thresh, detections_per_img)
        self.bg_iou_thresh_lo = float(bg_iou_thresh_lo)
        self.smooth_l1_beta = float(smooth_l1_beta)
        # the fast path's head options (set_fast); these defaults are the eager computation
        self.roi_chunk: int | None = None
        self.channels_last = False
        self.bf16_device: str | None = None
        self.pool_threads = 1
        self._thread_pool = None

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            class_logits, box_regression = self.box_predictor(self.box_features(features, proposals, image_shapes))
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            return [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)], {}
        _check_training_targets(targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(self.box_features(features, proposals, image_shapes))
        loss_classifier, loss_box_reg = fast_rcnn_losses(class_logits, box_regression, labels, regression_targets,
                                                         beta=self.smooth_l1_beta)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def box_features(self, features: dict[str, Tensor], proposals: list[Tensor],
                     image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool the proposals and run the per-RoI network: ``[sum P_i, box_head.out_channels]``. With the fast
        path's ``roi_chunk`` the network runs over chunks of that many RoIs (their activations stay in cache)."""
        pooled = self._pool(features, proposals, image_shapes)
        if self.roi_chunk is None or pooled.shape[0] <= self.roi_chunk:
            return self._run_head(pooled)
        return torch.cat([self._run_head(part) for part in pooled.split(self.roi_chunk)])

    def _run_head(self, x: Tensor) -> Tensor:
        """``box_head(x)``, on an NHWC copy with ``channels_last`` and under bf16 autocast (float32 out) when set."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.bf16_device is None:
            return self.box_head(x)
        with autocast("bf16", self.bf16_device, cpu_bf16=True):  # utils/amp: the one precision policy
            return self.box_head(x).float()

    def _pool(self, features: dict[str, Tensor], proposals: list[Tensor],
              image_shapes: list[tuple[int, int]]) -> Tensor:
        """``box_roi_pool``; with ``pool_threads > 1`` one image's RoIs split over that many threads (torchvision's
        CPU kernels release the GIL; the output is the same)."""
        n = self.pool_threads
        if n <= 1 or len(proposals) != 1 or proposals[0].shape[0] < 2 * n:
            return self.box_roi_pool(features, proposals, image_shapes)
        if self._thread_pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._thread_pool = ThreadPoolExecutor(n, thread_name_prefix="detres-roi-pool")
        parts = proposals[0].chunk(n)
        return torch.cat(list(self._thread_pool.map(lambda p: self.box_roi_pool(features, [p], image_shapes),
                                                    parts)))

    def __getstate__(self):  # thread pools do not copy or pickle; a new one starts on first use
        state = dict(self.__dict__)
        state["_thread_pool"] = None
        return state

    def assign_targets_to_proposals(self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
                                    ) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's matching, then ``bg_iou_thresh_lo``: a background proposal whose best IoU with every
        object is below it is ignored (-1); images without objects keep all proposals as background."""
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self.bg_iou_thresh_lo <= 0:
            return matched_idxs, labels
        for props, gt, lab in zip(proposals, gt_boxes, labels):
            if gt.numel() == 0:
                continue  # no object at all: every proposal stays background
            best = box_iou(gt, props).max(dim=0).values
            lab[(lab == 0) & (best < self.bg_iou_thresh_lo)] = -1  # too far from every object: ignored
        return matched_idxs, labels

    # --- the fast path's head part (called by detres.modeling.fast.prepare_for_inference on its copy) ---

    def can_commute(self) -> bool:
        """RoIAlign at an even size and a ResNet head whose first block is a bottleneck with a 1x1 conv1 and a
        1x1 projection shortcut (what :class:`~detres.modeling.roi_algebra.CommutedC4Block` needs)."""
        pool, layers = self.box_roi_pool, getattr(self.box_head, "layer4", None)
        first = layers[0] if isinstance(layers, nn.Sequential) and len(layers) > 0 else None
        if not (getattr(pool, "kind", None) == "roi_align" and pool.output_size % 2 == 0 and first is not None
                and hasattr(first, "conv3") and isinstance(first.downsample, nn.Sequential)):
            return False
        shortcut = first.downsample[0]  # both 1x1 convs move before the pooling; anything else stays per RoI
        return first.conv1.kernel_size == (1, 1) and getattr(shortcut, "kernel_size", None) == (1, 1)

    def commute_first_block(self, channels_last: bool) -> None:
        """Move conv5's first block into the pooling (:class:`CommutedC4Block`, its BNs folded first): the
        head's ``layer4`` keeps the other blocks and its own global average pooling. In place; needs
        :meth:`can_commute`."""
        first = self.box_head.layer4[0]
        if channels_last:
            first.to(memory_format=torch.channels_last)
        self.box_roi_pool = CommutedC4Block(self.box_roi_pool, first)
        self.box_head.layer4 = self.box_head.layer4[1:]

    def set_fast(self, *, channels_last: bool, pool_threads: int, bf16_device: str | None,
                 roi_chunk: int | None) -> None:
        """The fast path's head computation (see :meth:`box_features`); ``box_head``'s weights go NHWC with
        ``channels_last``. Exact except bf16."""
        if channels_last:
            self.box_head.to(memory_format=torch.channels_last)
        self.channels_last, self.pool_threads = channels_last, pool_threads
        self.bf16_device, self.roi_chunk = bf16_device, roi_chunk


def _check_training_targets(targets: list[dict[str, Any]] | None) -> None:
    """Training targets: present, boxes float and labels int64 (torchvision's own checks)."""
    if targets is None:
        raise ValueError("targets should not be None in training")
    for t in targets:
        if not t["boxes"].is_floating_point() or t["labels"].dtype != torch.int64:
            raise ValueError(f"target boxes must be float and labels int64, got {t['boxes'].dtype} and "
                             f"{t['labels'].dtype}")
