#!/usr/bin/env python
"""Convert pretrained weights into a detres weights file ``{"model": state_dict, "meta": meta}``.

    python tools/convert_weights.py SRC DST [--arch resnet50] [--format auto|torchvision|caffe2|detectron2|caffemodel]

SRC may be
  * a torchvision ImageNet checkpoint (resnet50-*.pth): checked against build_classifier(arch), meta =
    torchvision's preprocessing (RGB, [0, 1], ImageNet mean/std, "pytorch" style);
  * an MSRA ResNet-50/101/152 from Detectron (R-50.pkl, R-101.pkl, R-152.pkl; Caffe2 names, the classifier
    as fc1000_* or pred_*, the stem's conv1_b folded into bn1): renamed to torchvision's names, BN as FrozenBN,
    meta = "msra" style, BGR, 0..255, Detectron pixel means; solver bookkeeping keys are listed as dropped;
  * an original Caffe file (.caffemodel, read without Caffe): py-faster-rcnn's VGG16.v2.caffemodel or the MSRA
    ResNet-50/101/152-model.caffemodel; the ResNets' BatchNorm + Scale are folded as the MSRA prototxt defines
    them, giving the same file as their Detectron pkl; meta = Caffe's preprocessing (BGR, 0..255, pixel means);
  * a Caffe VGG-16 in torchvision's layout (vgg16_caffe.pth) with --preprocess caffe: BGR, 0..255,
    py-faster-rcnn pixel means (the paper's VGG-16 baseline);
  * a detectron2 R50-C4 / R101-C4 Faster R-CNN (model_final_*.pkl or .pth): a whole detres C4 detector;
    load it with detres.modeling.convert.build_converted_detector(DST), which builds the
    spec of the recipe recorded in meta["detector"] (detres.modeling.convert.detectron2_c4_spec).

Pickles are read by a restricted unpickler (numpy arrays, numbers, strings and containers only); a file
that names anything else is refused without running it. The ImageNet outputs (first three kinds) work as
``model.backbone.weights=DST`` in every detection config.
"""
from __future__ import annotations

import argparse
import sys

from detres.backbones.convert import convert_weights
from detres.modeling.convert import converted_detector_spec
from detres.utils.cli import run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="torchvision .pth, MSRA/Detectron .pkl, detectron2 .pkl/.pth or Caffe .caffemodel")
    p.add_argument("dst", help="output .pth (detres weights file)")
    p.add_argument("--arch", default=None, help="resnet18..resnet152 | vgg16; inferred when omitted, checked when given")
    p.add_argument("--format", default="auto", choices=("auto", "torchvision", "caffe2", "detectron2", "caffemodel"))
    p.add_argument("--preprocess", default=None, choices=("torchvision", "caffe"),
                   help="the input a torchvision-layout file expects; 'caffe' for a Caffe model in torchvision's "
                        "layout (vgg16_caffe.pth): BGR, 0-255, py-faster-rcnn pixel means")
    p.add_argument("--no-check", action="store_true", help="skip loading classifier weights into build_classifier")
    return p


def run(args: argparse.Namespace) -> int:
    sd, meta, fmt = convert_weights(args.src, args.dst, arch=args.arch, fmt=args.format, check=not args.no_check,
                                    preprocess=args.preprocess)
    n = sum(v.numel() for v in sd.values())
    print(f"{args.src} ({fmt}) -> {args.dst}: {meta['arch']}, {len(sd)} tensors, {n / 1e6:.2f}M values; "
          f"style {meta['style']}, {meta['channel_order']} x {meta['input_range']:g}, mean {meta['mean']}, "
          f"std {meta['std']}, bn_eps {meta['bn_eps']}")
    report = meta.get("conversion") or {}
    if report.get("dropped_keys"):
        print(f"dropped (solver bookkeeping, no weights): {', '.join(report['dropped_keys'])}")
    for note in report.get("notes", []):
        print(f"note: {note}")
    if "detector" in meta:
        spec, num_classes = converted_detector_spec(meta, path=args.src)
        print(f"detector: build_converted_detector('{args.dst}') = build_detector({spec}, {num_classes})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
