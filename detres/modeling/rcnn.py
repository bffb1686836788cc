"""torchvision's RPN and RoI heads with the reference implementation's training choices as options.

py-faster-rcnn (the code behind the ResNet paper's detection numbers) makes three choices that
torchvision hard-codes the other way. Each is a keyword here, and the defaults reproduce torchvision:

- ``allowed_border`` (RPN, training): anchors that cross the image border by more than this many pixels
  take no part in training (py-faster-rcnn's ``anchor_target_layer``: 0). Matching, including the
  "best anchor for each ground-truth box" rule, then sees only the anchors inside. Negative keeps every
  anchor (torchvision).
- ``min_size_original`` (RPN): proposals narrower or shorter than this many pixels AT THE ORIGINAL
  IMAGE SCALE are dropped before NMS (py-faster-rcnn ``RPN_MIN_SIZE = 16``). The scale of each image is
  ``target["size"] / target["orig_size"]`` when the caller passes the data pipeline's targets (training,
  and :func:`detres.evaluation.inference.predict_original`); without them it is 1 (input pixels).
- ``bg_iou_thresh_lo`` (RoI heads, training): a proposal is background only if its best IoU is in
  ``[lo, bg_iou_thresh)`` (py-faster-rcnn ``BG_THRESH_LO = 0.1`` on VOC; 0 on COCO, as torchvision);
  proposals below ``lo`` are ignored. Images without any ground-truth box keep all their proposals as
  background (torchvision's behaviour), so an image of only difficult objects still trains.

The classes are torchvision's with these additions only. ``PaperRoIHeads`` adjusts the parent's
matching. ``PaperRPN`` has its own ``forward`` (the parent's steps, reused) so that each image's size and
minimum proposal side travel as arguments: it keeps nothing between calls. At test time torchvision's
``FasterRCNN.forward`` carries only images and targets, so the scale reaches the RPN through targets that
hold ``size``/``orig_size`` and no boxes (:func:`scale_targets`).

The detector (:func:`detres.modeling.build_detector`) constructs both directly from its spec.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import box_iou
from torchvision.ops import boxes as box_ops

__all__ = ["PaperRPN", "PaperRoIHeads", "image_scales", "scale_targets"]

#: torchvision's own minimum proposal side (pixels): boxes of zero size are always removed.
_TORCHVISION_MIN_SIZE = 1e-3


def image_scales(targets: list[dict[str, Tensor]] | None, num_images: int) -> list[float]:
    """Per-image resize factor ``size / orig_size`` (from the height) of the data pipeline's targets;
    1.0 where a target lacks those fields or no targets were given."""
    if not targets:
        return [1.0] * num_images
    scales = []
    for t in targets:
        if "size" in t and "orig_size" in t and float(t["orig_size"][0]) > 0:
            scales.append(float(t["size"][0]) / float(t["orig_size"][0]))
        else:
            scales.append(1.0)
    return scales


def scale_targets(model: torch.nn.Module, targets: list[dict]) -> list[dict] | None:
    """At test time, the smallest targets that tell a :class:`PaperRPN` each image's scale (empty boxes plus
    ``size``/``orig_size``), or None when ``model`` does not need them (no PaperRPN, or no minimum size)."""
    rpn = getattr(model, "rpn", None)
    if not isinstance(rpn, PaperRPN) or rpn.min_size_original <= 0:
        return None
    if not all("size" in t and "orig_size" in t for t in targets):
        return None
    return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "size": t["size"],
             "orig_size": t["orig_size"]} for t in targets]


class PaperRPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork plus ``allowed_border`` and ``min_size_original`` (see the
    module docstring). All other arguments are the parent's.

    Stateless between calls: each image's size and scale are read from the call's own arguments
    (``images.image_sizes``, the targets' ``size``/``orig_size``) and handed down as arguments; nothing is
    stored on the module and ``self.min_size`` (torchvision's fixed threshold) is not used.
    """

    def __init__(self, *args, allowed_border: float = -1.0, min_size_original: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if min_size_original < 0:
            raise ValueError(f"rpn min_size must be >= 0 pixels, got {min_size_original}")
        self.allowed_border = float(allowed_border)
        self.min_size_original = float(min_size_original)

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The parent's forward, with each image's minimum proposal size (``min_size_original`` times its
        scale, see :func:`image_scales`) and image size passed to the steps that need them."""
        maps = list(features.values())
        objectness, pred_bbox_deltas = self.head(maps)
        anchors = self.anchor_generator(images, maps)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Faster R-CNN does not backpropagate through the proposals
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        min_sizes = [self._min_size(s) for s in image_scales(targets, num_images)]
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level,
                                              min_sizes=min_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets,
                                                                      image_sizes=list(images.image_sizes))
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(objectness, pred_bbox_deltas, labels,
                                                                  regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses

    def _min_size(self, scale: float) -> float:
        return max(self.min_size_original * scale, _TORCHVISION_MIN_SIZE)

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int], min_sizes: list[float] | None = None
                         ) -> tuple[list[Tensor], list[Tensor]]:
        """The parent's selection (top-n per level, clip, small boxes, score, NMS, post-n) with a minimum
        box side per image, ``min_sizes[i]`` pixels (default: ``min_size_original`` at scale 1)."""
        num_images = proposals.shape[0]
        if min_sizes is None:
            min_sizes = [self._min_size(1.0)] * num_images
        objectness = objectness.detach().reshape(num_images, -1)  # no gradient through the selection
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64, device=proposals.device)
                            for idx, n in enumerate(num_anchors_per_level)], 0)
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)  # per level, before NMS
        batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels = objectness[batch_idx, top_n_idx], levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape, min_size in zip(proposals, torch.sigmoid(objectness), levels, image_shapes,
                                                       min_sizes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = box_ops.batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]],
                                  image_sizes: list[tuple[int, int]] | None = None
                                  ) -> tuple[list[Tensor], list[Tensor]]:
        """The parent's matching; with ``allowed_border >= 0`` and the images' ``(h, w)`` sizes, only the
        anchors inside the border take part, the others are labelled -1 ("ignore") for the sampler."""
        if self.allowed_border < 0 or not image_sizes:
            return super().assign_targets_to_anchors(anchors, targets)
        b = self.allowed_border
        inside = []
        for a, (h, w) in zip(anchors, image_sizes):
            inside.append((a[:, 0] >= -b) & (a[:, 1] >= -b) & (a[:, 2] <= w + b) & (a[:, 3] <= h + b))
        labels_in, matched_in = super().assign_targets_to_anchors([a[m] for a, m in zip(anchors, inside)], targets)
        labels, matched = [], []
        for a, m, lab, box in zip(anchors, inside, labels_in, matched_in):
            full_labels = torch.full((a.shape[0],), -1.0, dtype=lab.dtype, device=a.device)
            full_labels[m] = lab
            full_boxes = torch.zeros(a.shape, dtype=box.dtype, device=a.device)
            full_boxes[m] = box
            labels.append(full_labels)
            matched.append(full_boxes)
        return labels, matched


class PaperRoIHeads(RoIHeads):
    """torchvision's RoIHeads plus ``bg_iou_thresh_lo`` (see the module docstring). All other arguments
    are the parent's (``fg_iou_thresh``, ``bg_iou_thresh`` = the upper end of the background range)."""

    def __init__(self, *args, bg_iou_thresh_lo: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        hi = self.proposal_matcher.low_threshold
        if not 0.0 <= bg_iou_thresh_lo <= hi:
            raise ValueError(f"roi bg_iou_thresh_lo must be in [0, bg_iou_thresh_hi={hi}], got {bg_iou_thresh_lo}")
        self.bg_iou_thresh_lo = float(bg_iou_thresh_lo)

    def assign_targets_to_proposals(self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
                                    ) -> tuple[list[Tensor], list[Tensor]]:
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self.bg_iou_thresh_lo <= 0:
            return matched_idxs, labels
        for props, gt, lab in zip(proposals, gt_boxes, labels):
            if gt.numel() == 0:
                continue  # no object at all: every proposal stays background
            best = box_iou(gt, props).max(dim=0).values
            lab[(lab == 0) & (best < self.bg_iou_thresh_lo)] = -1  # too far from every object: ignored
        return matched_idxs, labels
