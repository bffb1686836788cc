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

The classes are torchvision's with these additions only: the parent's methods do the work and the
subclasses adjust their inputs or outputs.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou

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
    module docstring). All other arguments are the parent's."""

    def __init__(self, *args, allowed_border: float = -1.0, min_size_original: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if min_size_original < 0:
            raise ValueError(f"rpn min_size must be >= 0 pixels, got {min_size_original}")
        self.allowed_border = float(allowed_border)
        self.min_size_original = float(min_size_original)
        self._image_sizes: list[tuple[int, int]] = []
        self._scales: list[float] = []

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        # the parent's helpers get no image sizes or scales: keep them for this call
        self._image_sizes = list(images.image_sizes)
        self._scales = image_scales(targets, len(images.image_sizes))
        try:
            return super().forward(images, features, targets)
        finally:
            self._image_sizes, self._scales = [], []

    def _min_size(self, scale: float) -> float:
        return max(self.min_size_original * scale, _TORCHVISION_MIN_SIZE)

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        scales = self._scales or [1.0] * proposals.shape[0]
        sizes = [self._min_size(s) for s in scales]
        if len(set(sizes)) == 1:  # one threshold for the whole batch: a single call of the parent
            self.min_size = sizes[0]
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        objectness = objectness.reshape(proposals.shape[0], -1)
        boxes, scores = [], []
        for i, size in enumerate(sizes):  # image by image, each with its own threshold
            self.min_size = size
            b, s = super().filter_proposals(proposals[i:i + 1], objectness[i:i + 1].reshape(-1),
                                            image_shapes[i:i + 1], num_anchors_per_level)
            boxes += b
            scores += s
        return boxes, scores

    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
                                  ) -> tuple[list[Tensor], list[Tensor]]:
        if self.allowed_border < 0 or not self._image_sizes:
            return super().assign_targets_to_anchors(anchors, targets)
        b = self.allowed_border
        inside = []
        for a, (h, w) in zip(anchors, self._image_sizes):
            inside.append((a[:, 0] >= -b) & (a[:, 1] >= -b) & (a[:, 2] <= w + b) & (a[:, 3] <= h + b))
        # match only the anchors inside; the others are labelled -1 ("ignore") for the sampler
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
