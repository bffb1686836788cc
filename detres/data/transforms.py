"""The one pixel pipeline of every task: decode, resize, to tensor, normalise; detection and classification
augmentation built from those steps.

- decode: :func:`read_image_rgb` (a file) / :func:`pil_to_rgb8` (a PIL image) -> HWC uint8 RGB numpy;
- resize: :class:`ShortSideResize` (albumentations), the shorter side to a size (one of several, chosen by the
  seeded random state), the longer side capped; the only resize of detection and ImageNet images (converted
  detectron2 models resize inside the model, ``modeling/detector.py``: a model-internal step, not the data's);
- to tensor: :func:`to_tensor`, HWC uint8 -> CHW float32 in [0, 1];
- normalise: :func:`normalize`, ``(x - mean) / std`` (detection leaves it to the model, whose weights meta
  names the mean/std; classification applies it here).

Every random choice comes from the transform's own seeded state (``seed=`` on each call: a function of the
seed alone), never from the global RNGs. Defaults are the config schema's (:mod:`detres.config`).

Detection (:class:`DetectionTransform`): resize, horizontal flip, optional jitter. The detector is built with
``min_size=None`` and does not resize again. Boxes are xyxy, 0-based continuous pixels (``[0, W]`` covers a
full row), before and after. Call contract: ``transform(image, target, seed=None) -> (image_tensor, target)``
where ``image`` is a numpy HWC uint8 RGB array and ``image_tensor`` a float32 CHW tensor in [0, 1]. The
returned target gains

- ``orig_size``: LongTensor ``[h0, w0]`` (before), ``size``: LongTensor ``[h, w]`` (after);
- ``flipped``: bool, whether the horizontal flip was applied;
- ``dropped_boxes``: int, how many boxes this call dropped because they were or became degenerate
  (zero width/height, or outside the image after clipping). This per-item stat is how the drop
  count is reported (it crosses worker processes with the batch; sum it in the training loop).

Per-box fields (``labels``, ``difficult`` and any other tensor with one row per box) stay aligned
with ``boxes``. :func:`to_original` maps model outputs back to the original image.

Classification (:class:`ClassificationTransform`, He et al. 2015 Sec. 3.4): ``transform(image, seed=None)``
maps HWC uint8 RGB to float32 ``[3, crop, crop]`` (training: random shorter side in ``[min_scale, max_scale]``,
random crop, flip, PCA lighting, mean/std) or ``[V, 3, crop, crop]`` (testing: shorter side ``resize``, then
the 10-crop, V = 10, or the centre crop, V = 1; view :data:`CENTER_VIEW` of the 10 is the centre crop).
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
from torchvision.transforms.v2 import functional as TF
from albumentations.augmentations.geometric.resize import SmallestMaxSize

from detres.config import ClsDataConfig, DataConfig

__all__ = ["pil_to_rgb8", "read_image_rgb", "ShortSideResize", "to_tensor", "normalize", "DetectionTransform",
           "build_transforms", "to_original", "Lighting", "ClassificationTransform", "build_cls_train_transform",
           "build_cls_test_transform", "PCA_EIGVAL", "PCA_EIGVEC", "CENTER_VIEW"]

#: The schema's defaults, written once in detres.config.
_DET = DataConfig()
_CLS = ClsDataConfig()

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
    """Resize so the shorter side is ``min_size`` (one of them, chosen by the seeded random state, if a
    sequence) unless the longer side would exceed ``max_size`` (None: no cap); then the longer side is
    ``max_size``. One bilinear interpolation, scale = min(min_size / short, max_size / long), output sides
    ``round(side * scale)``. ``area_for_downscale=True`` uses area averaging when shrinking (classification:
    ImageNet photos shrink ~2x to 256 px; without it they alias). Detection keeps bilinear throughout."""

    def __init__(self, min_size: int | Sequence[int] = _DET.min_size, max_size: int | None = _DET.max_size,
                 p: float = 1.0, *, area_for_downscale: bool = False):
        super().__init__(max_size=min_size, interpolation=cv2.INTER_LINEAR, p=p,
                         area_for_downscale="image" if area_for_downscale else None)
        self.long_max = max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        short = self.py_random.choice(self.max_size) if isinstance(self.max_size, (list, tuple)) else self.max_size
        scale = short / min(h, w)
        if self.long_max is not None:
            scale = min(scale, self.long_max / max(h, w))
        return {"scale": scale}


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 RGB numpy -> CHW float32 tensor in [0, 1] (the one conversion of every pipeline)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor | None = None
              ) -> torch.Tensor:
    """``(x - mean) / std`` for a float ``[..., 3, H, W]`` tensor; ``mean``/``std`` per channel (3 values) or a
    per-pixel image ``[3, H, W]`` (CIFAR's mean image); ``std`` None divides by nothing. Returns a new tensor."""
    m = torch.as_tensor(mean, dtype=x.dtype)
    out = x - (m.view(3, 1, 1) if m.ndim == 1 else m)
    if std is not None:
        s = torch.as_tensor(std, dtype=x.dtype)
        out = out / (s.view(3, 1, 1) if s.ndim == 1 else s)
    return out


def _seeded_state(seed: int | None) -> tuple[np.random.Generator, random.Random]:
    return np.random.default_rng(seed), random.Random(seed)


class DetectionTransform:
    """See the module docstring. Build with :func:`build_transforms`."""

    def __init__(self, *, train: bool, min_size: int | Sequence[int] = _DET.min_size,
                 max_size: int | None = _DET.max_size, flip_prob: float = _DET.flip_prob,
                 color_jitter: bool = _DET.color_jitter) -> None:
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
        self.compose.set_random_state(*_seeded_state(seed))

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
        return to_tensor(img), result


def build_transforms(*, train: bool, min_size: int | Sequence[int] = _DET.min_size,
                     max_size: int | None = _DET.max_size, flip_prob: float = _DET.flip_prob,
                     color_jitter: bool = _DET.color_jitter) -> DetectionTransform:
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


#: AlexNet's PCA of ImageNet RGB pixels in [0, 1]: eigenvalues and eigenvectors (columns), RGB order.
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])

#: Index of the un-flipped centre crop among the 10 test views (order: tl, tr, bl, br, centre, then flipped).
CENTER_VIEW = 4


class Lighting:
    """AlexNet PCA lighting: add ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)`` drawn
    from the numpy Generator passed in (the transform's seeded state). Input and output: float ``[3, H, W]``
    RGB in the [0, 1] scale (not clamped, as in AlexNet). ``alphastd = 0`` disables it (and draws nothing)."""

    def __init__(self, alphastd: float = _CLS.pca_lighting, *, eigval: torch.Tensor = PCA_EIGVAL,
                 eigvec: torch.Tensor = PCA_EIGVEC):
        if alphastd < 0:
            raise ValueError(f"lighting alphastd must be >= 0, got {alphastd}")
        self.alphastd = float(alphastd)
        self.eigval, self.eigvec = eigval.clone().float(), eigvec.clone().float()

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.alphastd == 0:
            return image
        alpha = torch.from_numpy(rng.normal(0.0, self.alphastd, 3)).float()
        return image + (self.eigvec @ (alpha * self.eigval)).to(image.dtype).view(3, 1, 1)


class ClassificationTransform:
    """See the module docstring. Build with :func:`build_cls_train_transform` / :func:`build_cls_test_transform`."""

    def __init__(self, ops: list[A.BasicTransform], *, mean: Sequence[float], std: Sequence[float],
                 lighting: float = 0.0, views: str | None = None, crop: int = 0) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {list(mean)} / {list(std)}")
        self.compose = A.Compose(ops)
        self.lighting = Lighting(lighting)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.views, self.crop = views, int(crop)
        self.set_seed(None)

    def set_seed(self, seed: int | None) -> None:
        """Every later random choice (scale, crop, flip, lighting) is a function of ``seed`` (None: fresh
        entropy); the global RNGs are never read."""
        self._rng, py = _seeded_state(seed)
        self.compose.set_random_state(self._rng, py)

    def __call__(self, image: np.ndarray, *, seed: int | None = None) -> torch.Tensor:
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            raise ValueError(f"expected an HWC uint8 RGB numpy array, got {type(image).__name__} "
                             f"{getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}")
        if seed is not None:
            self.set_seed(seed)
        x = to_tensor(self.compose(image=image)["image"])
        if self.views == "ten":
            x = torch.stack(TF.ten_crop(x, [self.crop, self.crop]))
        elif self.views == "center":
            x = TF.center_crop(x, [self.crop, self.crop]).unsqueeze(0)
        else:
            x = self.lighting(x, self._rng)
        return normalize(x, self.mean, self.std)


def build_cls_train_transform(*, min_scale: int = _CLS.min_scale, max_scale: int = _CLS.max_scale,
                              crop: int = _CLS.crop, lighting: float = _CLS.pca_lighting,
                              flip_prob: float = _DET.flip_prob, mean: Sequence[float] = tuple(_CLS.mean),
                              std: Sequence[float] = tuple(_CLS.std)) -> ClassificationTransform:
    """HWC uint8 -> float ``[3, crop, crop]``: shorter side a random integer in ``[min_scale, max_scale]``,
    random ``crop`` x ``crop`` crop, flip, PCA lighting, ``(x - mean) / std`` (He et al. 2015, Sec. 3.4)."""
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"scale range must satisfy 0 < min <= max, got [{min_scale}, {max_scale}]")
    if crop > min_scale:
        raise ValueError(f"crop {crop} is larger than the smallest scale {min_scale}")
    ops = [ShortSideResize(list(range(int(min_scale), int(max_scale) + 1)), None, area_for_downscale=True),
           A.RandomCrop(int(crop), int(crop)), A.HorizontalFlip(p=flip_prob)]
    return ClassificationTransform(ops, mean=mean, std=std, lighting=lighting)


def build_cls_test_transform(*, resize: int = _CLS.test_resize, crop: int = _CLS.crop, ten_crop: bool = True,
                             mean: Sequence[float] = tuple(_CLS.mean), std: Sequence[float] = tuple(_CLS.std)
                             ) -> ClassificationTransform:
    """HWC uint8 -> float ``[V, 3, crop, crop]``: shorter side ``resize``, then the 10-crop (V = 10: corners and
    centre of the image, then of its mirror image) or the centre crop (V = 1); ``(x - mean) / std``."""
    if crop > resize:
        raise ValueError(f"test crop {crop} is larger than the test resize {resize}")
    return ClassificationTransform([ShortSideResize(int(resize), None, area_for_downscale=True)], mean=mean, std=std,
                                   views="ten" if ten_crop else "center", crop=crop)
