"""detres.modeling: the C4 Faster R-CNN built from torchvision's own classes."""
from .detector import C4RoIPooler, InputTransform, build_detector

__all__ = ["build_detector", "C4RoIPooler", "InputTransform"]
