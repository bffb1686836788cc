"""torchvision's RPN and RoI heads with the reference implementation's training choices as options.

py-faster-rcnn (the code behind the ResNet paper's detection numbers) makes three choices that
torchvision hard-codes the other way. Each is a keyword here, and the defaults reproduce torchvision:

- ``allowed_border`` (RPN, training): anchors that cross the image border by more than this many pixels
  take no part in training (py-faster-rcnn's ``anchor_target_layer``: 0). Matching, including the
  "best anchor for each ground-truth box" rule, then sees only the anchors inside. Negative keeps every
  anchor (torchvision).
- ``min_size_original`` (RPN): proposals narrower or shorter than this many pixels AT THE ORIGINAL
  IMAGE SCALE are dropped before NMS (py-faster-rcnn ``RPN_MIN_SIZE = 16``, times ``im_scale``). The scale of
  each image is its input height over its original height: the detector's forward hands the RPN each
  image's original size (``original_image_sizes``, see :class:`detres.modeling.detector.C4FasterRCNN`);
  without them it is 1 (input pixels).
- ``bg_iou_thresh_lo`` (RoI heads, training): a proposal is background only if its best IoU is in
  ``[lo, bg_iou_thresh)`` (0.1: Fast R-CNN Sec. 2.3 and py-faster-rcnn's default, lib/fast_rcnn/config.py:58;
  0: torchvision, and pfr's end2end and alt_opt configs, experiments/cfgs/faster_rcnn_end2end.yml:9);
  proposals below ``lo`` are ignored. Images without any ground-truth box keep all their proposals as
  background (torchvision's behaviour), so an image of only difficult objects still trains.

- ``smooth_l1_beta`` (RPN and RoI heads, training): the transition point of the box losses' smooth L1
  (beta = 1 / sigma^2 in Caffe's ``SmoothL1Loss``). torchvision hard-codes 1/9 for both; py-faster-rcnn's
  train.prototxt gives the RPN's ``sigma: 3.0`` (beta 1/9) and the Fast R-CNN ``loss_bbox`` no sigma (beta 1).
  Only beta changes: the normalisations stay torchvision's (RPN: the sum over the sampled anchors' positive
  boxes divided by the number of sampled anchors; RoI heads: divided by the number of sampled RoIs).
- ``proposal_order="pfr"`` (RPN, with :class:`PfrAnchorGenerator`, both chosen by ``rpn.anchor_style``):
  py-faster-rcnn's proposal_layer.py order: decode, clip, drop boxes with a side below the minimum size
  measured as pfr measures it (``x2 - x1 + 1``), THEN the pre-NMS top-n by score, NMS, post-NMS top-n.
  torchvision takes the top-n first and drops small boxes (``x2 - x1``) afterwards, so small high-scoring
  boxes can use up its top-n. Clipping stays torchvision's (to ``[0, W]``; pfr clips to ``W - 1``).

Anchors (``rpn.anchor_style``): torchvision's ``AnchorGenerator`` centres each cell's anchors at ``16 i`` with
half-sides ``round(size * sqrt(1/r) / 2)`` and ``round(size * sqrt(r) / 2)`` (182 x 90 for 128 px at ratio 0.5).
py-faster-rcnn's generate_anchors.py starts from the 16-px base box (0, 0, 15, 15) (centre 7.5), enumerates
the ratios with rounding (ratio 0.5: ``w = round(sqrt(256 / 0.5)) = 23``, ``h = round(23 * 0.5) = 12``),
then multiplies by the scales ``size / 16`` (184 x 96 for 128 px), and shifts by ``16 i``.
:class:`PfrAnchorGenerator` makes exactly those boxes, written in detres's continuous coordinates: pfr's
inclusive pixel box ``(x1, y1, x2, y2)`` is ``(x1, y1, x2 + 1, y2 + 1)`` here (the same pixels; a box on pixel
columns 0..15 is [0, 16] here, as the data sets' boxes), so torchvision's box coder measures the same widths
and centres as pfr's bbox_transform does (184 px, centre pixel 7.5 = coordinate 8.0) and the regression
targets are pfr's. Decoding gives the same numbers as pfr's bbox_transform_inv (``ctr -/+ w / 2``, pfr
lib/fast_rcnn/bbox_transform.py l.53-59), which pfr reads as inclusive pixels: its boxes are 1 px wider than
the same numbers here. The size filter measures ``x2 - x1 + 1`` on them, so it keeps pfr's boxes exactly,
except for boxes clipped at the right or bottom border (pfr clips them 1 px shorter, see above).

The RPN is torchvision's with these additions only; the RoI head's options (``bg_iou_thresh_lo``, its
``smooth_l1_beta`` through :func:`fast_rcnn_losses`) are used by :class:`detres.modeling.roi_head.C4RoIHead`.
``PaperRPN`` has its own ``forward`` (the parent's steps, reused) so that each image's size and
minimum proposal side travel as arguments: it keeps nothing between calls. The sizes arrive through the
detector's own forward (``original_image_sizes``), as torchvision's ``GeneralizedRCNN.forward`` keeps them;
the scale is computed with tensor operations, so a traced (exported) model keeps it dynamic.

The detector (:func:`detres.modeling.build_detector`) constructs the RPN and the head directly from its spec.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from detres.modeling.tv_private import ImageList, RegionProposalNetwork, concat_box_prediction_layers

__all__ = ["PaperRPN", "PfrAnchorGenerator", "pfr_cell_anchors", "fast_rcnn_losses",
           "as_float64", "top_k_count", "PROPOSAL_ORDERS"]

#: torchvision's own minimum proposal side (pixels): boxes of zero size are always removed.
_TORCHVISION_MIN_SIZE = 1e-3
#: torchvision's smooth L1 beta of both box losses (rpn.py compute_loss, roi_heads.py fastrcnn_loss).
TORCHVISION_SMOOTH_L1_BETA = 1 / 9
#: the proposal selection orders of :class:`PaperRPN` (see the module docstring).
PROPOSAL_ORDERS = ("torchvision", "pfr")
#: py-faster-rcnn's generate_anchors(base_size=16): the side of the base box, the stride of conv5_3/res4.
PFR_BASE_SIZE = 16


def pfr_cell_anchors(sizes, aspect_ratios, base_size: int = PFR_BASE_SIZE, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> Tensor:
    """The anchors of one feature cell (the cell at the origin) as py-faster-rcnn's generate_anchors makes
    them, for ``scales = size / base_size``: [len(aspect_ratios) * len(sizes), 4], ratio-major (then size),
    as torchvision orders its own. Boxes xyxy in detres's continuous pixel coordinates (pfr's inclusive
    ``x2`` plus 1). ``aspect_ratios`` are height / width, as in both libraries.

    >>> pfr_cell_anchors([128], [0.5]).tolist()    # pfr: [-84, -40, 99, 55], 184 x 96, centre (7.5, 7.5)
    [[-84.0, -40.0, 100.0, 56.0]]
    """
    rows = []
    ctr = (base_size - 1) / 2  # the base box (0, 0, base-1, base-1)'s centre in pixel indices: 7.5
    for r in aspect_ratios:
        if r <= 0:
            raise ValueError(f"aspect ratios must be > 0, got {r}")
        w = round(math.sqrt(base_size * base_size / r))  # Python's round, like numpy's: half to even
        h = round(w * r)
        for size in sizes:
            s = size / base_size
            ws, hs = w * s, h * s
            rows.append((ctr - (ws - 1) / 2, ctr - (hs - 1) / 2, ctr + (ws - 1) / 2 + 1, ctr + (hs - 1) / 2 + 1))
    return torch.tensor(rows, dtype=torch.float64).to(dtype=dtype, device=device)


class PfrAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator (same arguments, same shifts ``stride * i`` and order: cells row-major,
    then the cell's anchors ratio-major) with py-faster-rcnn's cell anchors (:func:`pfr_cell_anchors`).
    ``sizes`` are the anchors' nominal sides in pixels (pfr's scales times 16)."""

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> Tensor:
        return pfr_cell_anchors(list(scales), list(aspect_ratios), dtype=dtype, device=device)


def fast_rcnn_losses(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor], *, beta: float = TORCHVISION_SMOOTH_L1_BETA
                     ) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` with the smooth L1 ``beta`` as an argument.

    class_logits [R, K+1] and box_regression [R, 4 (K+1)] of the R sampled RoIs of all images; labels and
    regression_targets per image ([R_i] with 0 = background, [R_i, 4] encoded targets). Returns the cross
    entropy (mean over the R RoIs) and the box loss: smooth L1 of the positives' own-class deltas, summed and
    divided by R (torchvision's normalisation)."""
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    box_regression = box_regression.reshape(class_logits.shape[0], -1, 4)
    box_loss = F.smooth_l1_loss(box_regression[pos, labels[pos]], regression_targets[pos], beta=beta,
                                reduction="sum") / labels.numel()
    return classification_loss, box_loss


def as_float64(value) -> Tensor:
    """A size (a Python number, or a 0-dim / one-element tensor: the data pipeline's int64 sizes, the sizes a
    traced model sees) as a float64 0-dim tensor; a tensor stays in the graph while tracing."""
    if isinstance(value, Tensor):
        return value.reshape(()).to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def top_k_count(x: Tensor, k: int):
    """``min(k, len(x))`` for ``x.topk``: an int, or while tracing a traced tensor, so that an exported model
    takes the top-k of however many candidates each image has (what torchvision's private ``_topk_min``
    does for its own RPN)."""
    n = x.shape[0]
    if isinstance(n, Tensor):  # tracing: sizes are tensors
        return torch.clamp(n, max=k)
    return min(k, n)


class PaperRPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork plus ``allowed_border`` and ``min_size_original`` (see the
    module docstring). All other arguments are the parent's.

    Stateless between calls: each image's size and scale are read from the call's own arguments
    (``images.image_sizes``, ``original_image_sizes``) and handed down as arguments; nothing is
    stored on the module and ``self.min_size`` (torchvision's fixed threshold) is not used.
    """

    def __init__(self, *args, allowed_border: float, min_size_original: float, proposal_order: str,
                 smooth_l1_beta: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the settings' ranges: the config's rules (config.field_problem)
        self.allowed_border = float(allowed_border)
        self.min_size_original = float(min_size_original)
        self.proposal_order = proposal_order
        self.smooth_l1_beta = float(smooth_l1_beta)

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None, original_image_sizes: list[tuple] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The parent's forward, with each image's minimum proposal side (``min_size_original`` times its
        scale ``h / H0``, from ``original_image_sizes`` = each image's ``(H0, W0)`` before any resize; None:
        scale 1) and image size passed to the steps that need them."""
        maps = list(features.values())
        objectness, pred_bbox_deltas = self.head(maps)
        anchors = self.anchor_generator(images, maps)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Faster R-CNN does not backpropagate through the proposals
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        originals = original_image_sizes if original_image_sizes is not None else images.image_sizes
        min_sizes = [self._min_size(as_float64(size[0]) / as_float64(orig[0]))
                     for size, orig in zip(images.image_sizes, originals)]
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

    def _min_size(self, scale: Tensor) -> Tensor:
        """``min_size_original * scale`` (float64, then float32 as a comparison with a Python number would
        round it); torchvision's order keeps its floor of 1e-3 px."""
        side = self.min_size_original * scale
        if self.proposal_order != "pfr":  # pfr's widths are x2 - x1 + 1 > 0: no floor needed
            side = torch.clamp(side, min=_TORCHVISION_MIN_SIZE)
        return side.to(torch.float32)

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The parent's losses with ``smooth_l1_beta``: binary cross entropy over the sampled anchors, and the
        positives' smooth L1 summed and divided by the number of sampled anchors (torchvision's)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        objectness = objectness.flatten()
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[sampled_pos], regression_targets[sampled_pos],
                                    beta=self.smooth_l1_beta, reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return objectness_loss, box_loss

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int], min_sizes: list[Tensor] | None = None
                         ) -> tuple[list[Tensor], list[Tensor]]:
        """The parent's selection (top-n per level, clip, small boxes, score, NMS, post-n) with a minimum
        box side per image, ``min_sizes[i]`` pixels (default: ``min_size_original`` at scale 1).
        With ``proposal_order="pfr"``: clip, small boxes (sides ``x2 - x1 + 1``), top-n, score, NMS, post-n.
        proposals [N, A, 4] xyxy input pixels, objectness [N, A] logits; returns per image the kept boxes
        [P, 4] and their probabilities [P], best first."""
        num_images = proposals.shape[0]
        if min_sizes is None:
            min_sizes = [self._min_size(torch.tensor(1.0, dtype=torch.float64))] * num_images
        objectness = objectness.detach().reshape(num_images, -1)  # no gradient through the selection
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64, device=proposals.device)
                            for idx, n in enumerate(num_anchors_per_level)], 0)
        levels = levels.reshape(1, -1).expand_as(objectness)
        if self.proposal_order == "pfr":
            return self._filter_proposals_pfr(proposals, objectness, levels, image_shapes, min_sizes,
                                              len(num_anchors_per_level))
        top_n_idx = self._top_n_idx(objectness, num_anchors_per_level)  # per level, before NMS
        batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels = objectness[batch_idx, top_n_idx], levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape, min_size in zip(proposals, torch.sigmoid(objectness), levels, image_shapes,
                                                       min_sizes):
            boxes = clip_boxes_to_image(boxes, shape)
            keep = remove_small_boxes(boxes, min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            boxes, scores = self._score_and_nms(boxes, scores, lvl)
            final_boxes.append(boxes)
            final_scores.append(scores)
        return final_boxes, final_scores

    def _score_and_nms(self, boxes: Tensor, scores: Tensor, lvl: Tensor) -> tuple[Tensor, Tensor]:
        """The end both proposal orders share: the score threshold, NMS per level, the post-NMS top-n."""
        keep = torch.where(scores >= self.score_thresh)[0]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
        return boxes[keep], scores[keep]

    def _top_n_idx(self, objectness: Tensor, num_anchors_per_level: list[int]) -> Tensor:
        """[N, T] indices of each level's ``pre_nms_top_n`` best anchors by objectness (torchvision's order)."""
        r, offset = [], 0
        for ob in objectness.split(num_anchors_per_level, 1):
            _, idx = ob.topk(top_k_count(ob[0], self.pre_nms_top_n()), dim=1)
            r.append(idx + offset)
            offset += ob.size(1)
        return torch.cat(r, dim=1)

    def _filter_proposals_pfr(self, proposals: Tensor, objectness: Tensor, levels: Tensor,
                              image_shapes: list[tuple[int, int]], min_sizes: list[float], num_levels: int
                              ) -> tuple[list[Tensor], list[Tensor]]:
        """py-faster-rcnn proposal_layer.py's order: the size filter comes before the top-n (per level, as
        the parent's top-n; a C4 detector has one level, as pfr)."""
        pre_n = self.pre_nms_top_n()
        final_boxes, final_scores = [], []
        for boxes, logits, lvl, shape, min_size in zip(proposals, objectness, levels, image_shapes, min_sizes):
            boxes = clip_boxes_to_image(boxes, shape)
            ws, hs = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1  # pfr's _filter_boxes
            keep = torch.where((ws >= min_size) & (hs >= min_size))[0]
            boxes, logits, lvl = boxes[keep], logits[keep], lvl[keep]
            top = []
            for level in range(num_levels):  # static, so that tracing (export) keeps the loop
                idx = torch.where(lvl == level)[0]
                top.append(idx[logits[idx].topk(top_k_count(idx, pre_n)).indices])
            top = torch.cat(top)
            boxes, scores, lvl = boxes[top], torch.sigmoid(logits[top]), lvl[top]
            boxes, scores = self._score_and_nms(boxes, scores, lvl)
            final_boxes.append(boxes)
            final_scores.append(scores)
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
