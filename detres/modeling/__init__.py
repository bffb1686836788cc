"""detres.modeling: the C4 Faster R-CNN built from a :class:`DetectorSpec` with torchvision's own classes, its fast
inference path and export."""
from .detector import InputTransform, build_detector
from .export import export_detector
from .fast import prepare_for_inference
from .roi_head import C4RoIHead, C4RoIPooler
from .spec import BackboneSpec, DetectorSpec, InputSpec, PoolerSpec, RoISpec, RPNSpec, SpecError

__all__ = ["build_detector", "DetectorSpec", "BackboneSpec", "PoolerSpec", "RPNSpec", "RoISpec", "InputSpec",
           "SpecError", "C4RoIHead", "C4RoIPooler", "InputTransform", "prepare_for_inference", "export_detector"]
