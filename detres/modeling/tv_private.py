"""The one door to torchvision's undocumented detection internals that detres builds on.

torchvision documents its detection models by their constructors (``FasterRCNN(backbone, ...)``,
``AnchorGenerator``, ``RPNHead``, ``FastRCNNPredictor``) and ``torchvision.ops``; detres uses those directly.
What the paper's recipe needs beyond them (:mod:`detres.modeling.rcnn`, :mod:`detres.modeling.detector`)
subclasses or calls torchvision classes whose methods are not a documented API and may change in any
release. Every such symbol is imported HERE and nowhere else in detres (``tests/test_tv_private.py`` greps
for it), and :data:`CONTRACT` lists each one with the parameters detres relies on;
:func:`check_contract` (run by that test) names the symbol that changed.

No underscore-private torchvision name is used (``_get_top_n_idx``, ``det_utils._topk_min`` and
``FasterRCNN.__new__`` + ``GeneralizedRCNN.__init__`` were replaced by detres's own code and the public
constructor).
"""
from __future__ import annotations

import inspect
from typing import Any

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["GeneralizedRCNNTransform", "ImageList", "RegionProposalNetwork", "RoIHeads", "RPNHead",
           "concat_box_prediction_layers", "CONTRACT", "OWNERS", "INSTANCE_ATTRIBUTES", "check_contract"]

#: symbol (``Owner.attribute``, or a function's name) -> the leading parameter names detres passes or
#: overrides, in order (``self`` left out). The comments say what detres does with each.
CONTRACT: dict[str, tuple[str, ...]] = {
    # InputTransform subclasses it: overrides normalize/resize, calls forward and postprocess
    "GeneralizedRCNNTransform.__init__": ("min_size", "max_size", "image_mean", "image_std", "size_divisible"),
    "GeneralizedRCNNTransform.forward": ("images", "targets"),
    "GeneralizedRCNNTransform.normalize": ("image",),
    "GeneralizedRCNNTransform.resize": ("image", "target"),
    "GeneralizedRCNNTransform.postprocess": ("result", "image_shapes", "original_image_sizes"),
    "ImageList": ("tensors", "image_sizes"),
    # PaperRPN subclasses it with its own forward (the parent's steps), filter_proposals and compute_loss
    "RegionProposalNetwork.__init__": ("anchor_generator", "head", "fg_iou_thresh", "bg_iou_thresh",
                                        "batch_size_per_image", "positive_fraction", "pre_nms_top_n",
                                        "post_nms_top_n", "nms_thresh", "score_thresh"),
    "RegionProposalNetwork.forward": ("images", "features", "targets"),
    "RegionProposalNetwork.filter_proposals": ("proposals", "objectness", "image_shapes", "num_anchors_per_level"),
    "RegionProposalNetwork.assign_targets_to_anchors": ("anchors", "targets"),
    "RegionProposalNetwork.compute_loss": ("objectness", "pred_bbox_deltas", "labels", "regression_targets"),
    "RegionProposalNetwork.pre_nms_top_n": (),
    "RegionProposalNetwork.post_nms_top_n": (),
    "concat_box_prediction_layers": ("box_cls", "box_regression"),
    "RPNHead": ("in_channels", "num_anchors"),  # built by build_detector (its module is rpn.py's)
    # C4RoIHead (roi_head.py) subclasses it with its own forward: the parent's sampling in training, its
    # postprocessing in inference
    "RoIHeads.__init__": ("box_roi_pool", "box_head", "box_predictor", "fg_iou_thresh", "bg_iou_thresh",
                           "batch_size_per_image", "positive_fraction", "bbox_reg_weights", "score_thresh",
                           "nms_thresh", "detections_per_img"),
    "RoIHeads.select_training_samples": ("proposals", "targets"),
    "RoIHeads.assign_targets_to_proposals": ("proposals", "gt_boxes", "gt_labels"),
    "RoIHeads.postprocess_detections": ("class_logits", "box_regression", "proposals", "image_shapes"),
    # PfrAnchorGenerator overrides the cell-anchor method of the (public) AnchorGenerator
    "AnchorGenerator.generate_anchors": ("scales", "aspect_ratios", "dtype", "device"),
    # C4FasterRCNN: the public constructor, then its rpn/roi_heads/transform replaced by detres's parts
    "FasterRCNN.__init__": ("backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std",
                             "rpn_anchor_generator", "rpn_head"),
}

#: attributes detres reads from torchvision objects it did not write (checked on built instances by the test).
INSTANCE_ATTRIBUTES = {
    "RegionProposalNetwork": ("anchor_generator", "head", "box_coder", "fg_bg_sampler", "score_thresh",
                              "nms_thresh", "min_size"),
    "RoIHeads": ("box_roi_pool", "box_head", "box_predictor", "proposal_matcher", "fg_bg_sampler"),
    "FasterRCNN": ("transform", "backbone", "rpn", "roi_heads"),
}


#: the torchvision objects that :data:`CONTRACT`'s names start with
OWNERS: dict[str, Any] = {"GeneralizedRCNNTransform": GeneralizedRCNNTransform, "ImageList": ImageList,
                          "RegionProposalNetwork": RegionProposalNetwork, "RoIHeads": RoIHeads,
                          "AnchorGenerator": AnchorGenerator, "FasterRCNN": FasterRCNN, "RPNHead": RPNHead,
                          "concat_box_prediction_layers": concat_box_prediction_layers}


def _resolve(name: str, owners: dict[str, Any]) -> Any:
    owner, _, attr = name.partition(".")
    obj = owners.get(owner)
    if attr and obj is not None:
        obj = getattr(obj, attr if attr != owner else "__init__", None)
    elif obj is not None and inspect.isclass(obj):
        obj = obj.__init__
    return obj


def check_contract(contract: dict[str, tuple[str, ...]] | None = None,
                   owners: dict[str, Any] | None = None) -> list[str]:
    """One line per symbol of ``contract`` (default :data:`CONTRACT`, resolved in ``owners``, default
    :data:`OWNERS`) that torchvision no longer has or whose parameters no longer start with the ones detres
    relies on, naming the symbol; [] when torchvision still matches."""
    problems = []
    owners = owners if owners is not None else OWNERS
    for name, expected in (contract if contract is not None else CONTRACT).items():
        obj = _resolve(name, owners)
        if not callable(obj):
            problems.append(f"torchvision changed {name}: not found (detres/modeling/tv_private.py relies on it)")
            continue
        params = [p for p in inspect.signature(obj).parameters if p != "self"]
        if tuple(params[:len(expected)]) != tuple(expected):
            problems.append(f"torchvision changed {name}: parameters {params[:len(expected)]}, detres relies on "
                            f"{list(expected)} (detres/modeling/tv_private.py)")
    return problems
