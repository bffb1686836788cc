"""Data: VOC / COCO / synthetic-shapes data sets, albumentations transforms, loaders.

Item contract: ``(image, target)``; target boxes are float xyxy in 0-based pixels, labels int64
1..K (0 = background), ``image_id`` str (VOC) or int (COCO), VOC also ``difficult``.
"""
from detres.data.coco import COCODetection
from detres.data.loader import build_test_loader, build_train_loader, collate
from detres.data.shapes import SHAPES_CLASSES, generate_shapes_voc
from detres.data.transforms import build_transforms, read_image_rgb, to_original
from detres.data.voc import VOC_CLASSES, VOCConcatDataset, VOCDetection, build_voc, find_voc_dir

__all__ = [
    "VOC_CLASSES", "VOCDetection", "VOCConcatDataset", "build_voc", "find_voc_dir",
    "COCODetection", "SHAPES_CLASSES", "generate_shapes_voc",
    "build_transforms", "to_original", "read_image_rgb",
    "build_train_loader", "build_test_loader", "collate",
]
