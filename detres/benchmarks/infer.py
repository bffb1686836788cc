"""Inference speed: ``infer``. C4 detection of one image (or a batch on CUDA) with exactly ``--proposals``
RoIs, three ways in the same run: a plain torchvision assembly of the same network, detres eager, and
detres's fast path (:func:`detres.modeling.fast.prepare_for_inference`).

The torchvision baseline is what a torchvision user would write for the paper's C4 layout: its own ResNet
(FrozenBatchNorm2d) cut into a trunk ``conv1..layer3`` and a head ``layer4 + average pooling``,
``MultiScaleRoIAlign`` at 14x14 (7x7 for VGG-16's fc6/fc7 head), torchvision's FasterRCNN. All three get
random weights whose residual branches are damped so that activations stay finite, an RPN NMS threshold of
1.0 so that exactly ``--proposals`` RoIs reach the head, and the same 600x1000 input. Variants are timed in
turn, round after round, and the median is reported, so drifts of a shared machine hit them alike.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from detres.backbones import backbone_info, default_pool_size
from detres.benchmarks import register
from detres.modeling import BackboneSpec, DetectorSpec, PoolerSpec, RPNSpec, build_detector
from detres.modeling.fast import FAST_DEFAULTS, prepare_for_inference
from detres.modeling.stats import tame_random_weights
from detres.utils.cli import positive_int

__all__ = ["torchvision_c4", "time_inference", "bench_infer"]


def torchvision_c4(name: str, *, num_classes: int = 21, proposals: int = 300) -> nn.Module:
    """The same C4 detector assembled from torchvision's own parts (the baseline of ``infer``)."""
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

    pool = default_pool_size(name)
    if backbone_info(name).fc_head:  # VGG-16: conv1_1 .. conv5_3 + ReLU (stride 16), then fc6, fc7
        trunk, channels = getattr(torchvision.models, name)().features[:30], 512
        head = nn.Sequential(nn.Flatten(), nn.Linear(512 * pool * pool, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU())
        head_out = 4096
    else:
        net = getattr(torchvision.models, name)(norm_layer=FrozenBatchNorm2d)
        trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        channels = net.layer3[-1].conv3.out_channels if hasattr(net.layer3[-1], "conv3") else 256
        head = nn.Sequential(net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head_out = channels * 2
    trunk.out_channels = channels
    anchors = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    model = FasterRCNN(trunk, num_classes=None, rpn_anchor_generator=anchors,
                       box_roi_pool=MultiScaleRoIAlign(["0"], pool, 0), box_head=head,
                       box_predictor=FastRCNNPredictor(head_out, num_classes), min_size=600, max_size=1000,
                       rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=proposals, rpn_nms_thresh=1.0,
                       box_score_thresh=0.05, box_nms_thresh=0.3)
    return model


def _detres_c4(name: str, *, proposals: int) -> nn.Module:
    # torchvision's ResNets are "v1.5" (stride in the 3x3): the same network is the pytorch style
    spec = DetectorSpec(backbone=BackboneSpec(name=name, style="pytorch"),
                        pooler=PoolerSpec(type="roi_align", resolution=default_pool_size(name)),
                        rpn=RPNSpec(post_nms_top_n_test=proposals, nms_thresh=1.0))
    return build_detector(spec, 21)


@torch.no_grad()
def time_inference(models: dict[str, nn.Module], images: list[torch.Tensor], *, rounds: int, device: torch.device
                   ) -> dict[str, float]:
    """Median seconds per call of each model on ``images`` (one call = the whole list), timed in turn."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds + 1):  # round 0 warms up
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101", "vgg16"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=positive_int, default=3, help="timed rounds (after one warm-up)")
    p.add_argument("--batch", type=int, default=None, help="images per call (default: 1 on CPU, 8 on CUDA)")
    p.add_argument("--proposals", type=int, default=300)
    p.add_argument("--size", type=int, nargs=2, default=(600, 1000), metavar=("H", "W"))
    for k, v in FAST_DEFAULTS.items():
        if isinstance(v, bool):
            p.add_argument(f"--{k.replace('_', '-')}", dest=k, default=None, action=argparse.BooleanOptionalAction,
                           help=f"fast path option (default {v})")
    p.add_argument("--roi-chunk", type=int, default=None, help="fast path: RoIs per head chunk (default: all)")
    p.add_argument("--pool-threads", type=int, default=None, help="fast path: threads of the RoI pooling (CPU)")


@register("infer", "C4 inference ms/image: plain torchvision assembly vs detres eager vs the fast path", _infer_args)
def bench_infer(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    batch = args.batch or (8 if device.type == "cuda" else 1)
    h, w = args.size
    torch.manual_seed(0)
    images = [torch.rand(3, h, w, device=device) for _ in range(batch)]
    options = {k: getattr(args, k) for k in FAST_DEFAULTS if getattr(args, k, None) is not None}
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "threads": torch.get_num_threads(), "image": f"{h}x{w}", "batch": batch,
                           "proposals": args.proposals, "fast_options": {**FAST_DEFAULTS, **options}}
    for name in args.backbones:
        tv = torchvision_c4(name, proposals=args.proposals)
        ours = _detres_c4(name, proposals=args.proposals)
        for m in (tv, ours):
            tame_random_weights(m)
        models = {"torchvision": tv.eval().to(device), "eager": ours.eval().to(device),
                  "fast": prepare_for_inference(ours, device=device, **options)}
        t = time_inference(models, images, rounds=args.rounds, device=device)
        out[name] = {**{f"{k}_ms_per_image": 1000 * v / batch for k, v in t.items()},
                     "fast_images_per_s": batch / t["fast"], "eager_vs_torchvision": t["eager"] / t["torchvision"],
                     "fast_vs_torchvision": t["fast"] / t["torchvision"], "fast_vs_eager": t["fast"] / t["eager"]}
    return out
