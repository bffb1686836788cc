"""Detection transforms (albumentations): resize to a shorter side, horizontal flip, optional jitter.

This is the ONLY place where images are resized; the detector is built with ``min_size=None`` and
does not resize again. Boxes are xyxy, 0-based continuous pixels (``[0, W]`` covers a full row),
before and after.

Call contract: ``transform(image, target, seed=None) -> (image_tensor, target)`` where ``image`` is a
numpy HWC uint8 RGB array and ``image_tensor`` a float32 CHW tensor in [0, 1]; ``seed`` (an int) makes
the random choices (flip, jitter) a function of the seed alone. The returned target gains

- ``orig_size``: LongTensor ``[h0, w0]`` (before), ``size``: LongTensor ``[h, w]`` (after);
- ``flipped``: bool, whether the horizontal flip was applied;
- ``dropped_boxes``: int, how many boxes this call dropped because they were or became degenerate
  (zero width/height, or outside the image after clipping). This per-item stat is how the drop
  count is reported (it crosses worker processes with the batch; sum it in the training loop).

Per-box fields (``labels``, ``difficult`` and any other tensor with one row per box) stay aligned
with ``boxes``. :func:`to_original` maps model outputs back to the original image.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from albumentations.augmentations.geometric.resize import SmallestMaxSize

__all__ = ["pil_to_rgb8", "read_image_rgb", "ShortSideResize", "DetectionTransform", "build_transforms", "to_original"]

_EXIF_ORIENTATION = 0x0112
_warned_exif: list[str] = []

#: Minimum box side (pixels) below which a box counts as degenerate.
MIN_BOX_SIDE = 1e-3

def pil_to_rgb8(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as HWC uint8 RGB, every mode scaled to 0..255 rather than clipped.

    PIL's own ``convert("RGB")`` clips the modes with more than 8 bits (a 16-bit grey PNG becomes white
    wherever it exceeds 255). Here 16-bit grey (``I;16*``, and ``I``, which PIL uses for 16-bit PNGs) is
    divided by 257 (65535 -> 255), 32-bit float grey (``F``) is read as 0..1; 16-bit RGB PNGs are reduced
    to 8 bits by PIL itself. Grey, palette, CMYK, YCbCr and alpha modes are converted by PIL."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(im, dtype=np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) / 257.0)
    elif mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        if not np.isfinite(grey).all():
            raise ValueError("float image with NaN or infinite pixels")
        grey = np.rint(np.clip(grey, 0.0, 1.0) * 255.0)
    else:
        return np.array(im.convert("RGB"))
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to HWC uint8 RGB.

    Grayscale, palette, CMYK and alpha images are converted to RGB; 16-bit and float images are scaled to
    0..255 (:func:`pil_to_rgb8`), never clipped. EXIF orientation is NOT applied: boxes
    refer to the pixel grid as stored in the file, as VOC, COCO and the labelling tools that export them
    save it. The whole file is decoded (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off), so a truncated or
    damaged image is a ValueError naming the file, never a half-grey picture.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None) and not _warned_exif:
                _warned_exif.append(str(path))
                logging.getLogger(__name__).warning(
                    "%s: its EXIF orientation tag is ignored; images and boxes are used in the pixel grid stored "
                    "in the file, as VOC, COCO and labelling tools save boxes (warned once)", path)
            return pil_to_rgb8(im)
    except FileNotFoundError:
        raise ValueError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from None


class ShortSideResize(SmallestMaxSize):
    """Resize so the shorter side is ``min_size`` (one of them, chosen at random, if a sequence)
    unless the longer side would exceed ``max_size``; then the longer side is ``max_size``.
    One interpolation, scale = min(min_size / short, max_size / long)."""

    def __init__(self, min_size: int | Sequence[int] = 600, max_size: int | None = 1000, p: float = 1.0):
        super().__init__(max_size=min_size, interpolation=cv2.INTER_LINEAR, p=p)
        self.long_max = max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        short = self.py_random.choice(self.max_size) if isinstance(self.max_size, (list, tuple)) else self.max_size
        scale = short / min(h, w)
        if self.long_max is not None:
            scale = min(scale, self.long_max / max(h, w))
        return {"scale": scale}


class DetectionTransform:
    """See the module docstring. Build with :func:`build_transforms`."""

    def __init__(self, *, train: bool, min_size: int | Sequence[int] = 600, max_size: int | None = 1000,
                 flip_prob: float = 0.5, color_jitter: bool = False) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        sizes = list(min_size) if isinstance(min_size, (list, tuple)) else [min_size]
        if not sizes or any(int(s) <= 0 for s in sizes) or (max_size is not None and max_size <= 0):
            raise ValueError(f"min_size/max_size must be positive, got {min_size}/{max_size}")
        self.train = train
        ops: list[A.BasicTransform] = [ShortSideResize(min_size, max_size)]
        if train and flip_prob > 0:
            ops.append(A.HorizontalFlip(p=flip_prob))
        if train and color_jitter:
            ops.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8))
        self.compose = A.Compose(
            ops,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_index"], clip=True,
                                     min_area=0.0, min_width=0.0, min_height=0.0),
            save_applied_params=True,
        )

    def set_seed(self, seed: int | None) -> None:
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray, target: dict, *, seed: int | None = None) -> tuple[torch.Tensor, dict]:
        if seed is not None:
            self.set_seed(seed)
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            raise ValueError(f"image {target.get('image_id')!r}: expected HWC uint8 RGB numpy array, "
                             f"got {type(image).__name__} {getattr(image, 'shape', '')}")
        h0, w0 = image.shape[:2]
        boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        n_in = boxes.shape[0]
        # Clip to the image and drop degenerate boxes before albumentations sees them.
        b = boxes.numpy().astype(np.float64)
        b[:, 0::2] = b[:, 0::2].clip(0, w0)
        b[:, 1::2] = b[:, 1::2].clip(0, h0)
        valid = np.flatnonzero(((b[:, 2] - b[:, 0]) > MIN_BOX_SIDE) & ((b[:, 3] - b[:, 1]) > MIN_BOX_SIDE))
        out = self.compose(image=image, bboxes=b[valid], box_index=valid)
        img = out["image"]
        h, w = img.shape[:2]
        new_boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        kept = np.asarray(out["box_index"], dtype=np.int64).reshape(-1)
        ok = ((new_boxes[:, 2] - new_boxes[:, 0]) > MIN_BOX_SIDE) & ((new_boxes[:, 3] - new_boxes[:, 1]) > MIN_BOX_SIDE)
        new_boxes, kept = new_boxes[ok], kept[ok]
        flipped = any(name == "HorizontalFlip" for name, _ in out.get("applied_transforms", []))

        result = {}
        kept_t = torch.from_numpy(kept)
        for key, value in target.items():
            if key == "boxes":
                continue
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n_in and key not in ("orig_size", "size"):
                result[key] = value[kept_t]
            else:
                result[key] = value
        result["boxes"] = torch.from_numpy(new_boxes.astype(np.float32))
        result["orig_size"] = torch.tensor([h0, w0], dtype=torch.int64)
        result["size"] = torch.tensor([h, w], dtype=torch.int64)
        result["flipped"] = bool(flipped)
        result["dropped_boxes"] = int(n_in - len(kept))
        tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous().float().div_(255.0)
        return tensor, result


def build_transforms(*, train: bool, min_size: int | Sequence[int] = 600, max_size: int | None = 1000,
                     flip_prob: float = 0.5, color_jitter: bool = False) -> DetectionTransform:
    """The standard pipeline: resize (shorter side ``min_size``, longer side at most ``max_size``),
    then, when ``train``, horizontal flip with ``flip_prob`` and optional photometric jitter."""
    return DetectionTransform(train=train, min_size=min_size, max_size=max_size, flip_prob=flip_prob,
                              color_jitter=color_jitter)


def to_original(boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """Map xyxy boxes [N, 4] from the transformed image (``target["size"]``, after an optional flip)
    back to the original image (``target["orig_size"]``). Targets without sizes pass boxes through."""
    if "size" not in target or "orig_size" not in target:
        return boxes
    h, w = (float(v) for v in target["size"])
    h0, w0 = (float(v) for v in target["orig_size"])
    out = boxes.clone().float()
    if target.get("flipped", False):
        out[:, [0, 2]] = w - boxes[:, [2, 0]].float()
    out[:, 0::2] *= w0 / w
    out[:, 1::2] *= h0 / h
    return out
