"""Data: VOC / COCO / synthetic-shapes / ImageNet / CIFAR-10 data sets, the one pixel pipeline (transforms),
samplers, and the one loader stack.

Item contract (detection): ``(image, target)``; target boxes are float xyxy in 0-based pixels, labels
int64 1..K (0 = background), ``image_id`` str (VOC) or int (COCO), VOC also ``difficult``. See
:mod:`detres.data.dataset` for the data-set contract and the explicit augmentation seed.
"""
from detres.data.coco import COCODetection
from detres.data.dataset import ConcatDetection, DetectionDataset
from detres.data.loader import build_test_loader, build_train_loader, collate
from detres.data.samplers import GroupedInfiniteBatchSampler, shard_range
from detres.data.shapes import SHAPES_CLASSES, generate_shapes_voc
from detres.data.transforms import build_transforms, read_image_rgb, to_original
from detres.data.voc import VOC_CLASSES, VOCDetection, build_voc, find_voc_dir

__all__ = [
    "DetectionDataset", "ConcatDetection", "VOC_CLASSES", "VOCDetection", "build_voc", "find_voc_dir",
    "COCODetection", "SHAPES_CLASSES", "generate_shapes_voc",
    "build_transforms", "to_original", "read_image_rgb",
    "build_train_loader", "build_test_loader", "collate",
    "GroupedInfiniteBatchSampler", "shard_range",
]
