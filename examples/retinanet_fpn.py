"""detres.backbones inside another torchvision detector: RetinaNet on an FPN over res3-res5.

Run: python examples/retinanet_fpn.py  (random weights; pass weights=PATH for ImageNet ones)
"""
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from detres.backbones import build_backbone


class ResNetFPN(nn.Module):
    """A detres trunk with an FPN on top; the FPN's inputs come from the declared feature specs."""

    def __init__(self, name="resnet50", weights=None, out_channels=256):
        super().__init__()
        self.body = build_backbone(name, weights=weights, out_features=("res3", "res4", "res5"))
        in_channels = [spec.channels for spec in self.body.feature_specs.values()]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, x):
        return self.fpn(OrderedDict(self.body(x)))


def build_retinanet(num_classes=91, name="resnet50", weights=None):
    backbone = ResNetFPN(name, weights)
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors)


if __name__ == "__main__":
    model = build_retinanet(num_classes=21).eval()
    with torch.no_grad():
        print({k: v.shape for k, v in model([torch.rand(3, 320, 480)])[0].items()})
