"""ImageNet classification data: the folder data set (the pixel pipeline is :mod:`detres.data.transforms`,
the loaders :mod:`detres.data.loader`, the same as detection's).

Layout (ImageFolder): ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``; the class index is
the position of the wnid in the sorted list of training folders, and validation uses the same list.
Images are decoded by :func:`detres.data.transforms.read_image_rgb` (16-bit and float images scaled, not
clipped) and augmented by :func:`~detres.data.transforms.build_cls_train_transform` (He et al. 2015,
Sec. 3.4: scale augmentation in [256, 480], random 224 crop, flip, PCA lighting, mean subtraction) or
evaluated through :func:`~detres.data.transforms.build_cls_test_transform` (10-crop or centre crop).

Mean subtraction: the paper subtracts the per-pixel mean image; with random scales and crops that mean image
is flat to within noise, so by default the per-channel ImageNet mean is subtracted, and no standard deviation
divides (the config's ``data.mean`` / ``data.std``; BN after conv1 absorbs the scale). ``data.mean_image: true``
subtracts the per-pixel mean image itself (``subtract``; computed by the task from the training images'
centre views, :func:`sum_images`), from every crop; the multi-scale test, whose images have any size,
subtracts its per-channel mean.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from detres.data.transforms import CENTER_VIEW, ClassificationTransform, ShortSideResize, read_image_rgb

__all__ = ["IMAGE_EXTENSIONS", "CENTER_VIEW", "ImageNetFolder", "MultiScaleViews", "list_collate", "read_image",
           "sum_images"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
#: Index of the centre crop among the 10 test views (defined with the views in detres.data.transforms).
CENTER_VIEW = CENTER_VIEW


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """:func:`~detres.data.transforms.read_image_rgb` as ``uint8 [3, H, W]`` (ValueError naming a bad file)."""
    return torch.from_numpy(read_image_rgb(path)).permute(2, 0, 1).contiguous()


class ImageNetFolder(Dataset):
    """``root/<wnid>/*.JPEG`` -> items ``(transform(image), label int)``; without a transform the image is
    ``uint8 [3, H, W]`` RGB.

    Args:
        root: the split folder (e.g. ``imagenet/train``).
        classes: class folder names in index order; None = the sorted sub-folders of ``root``
            (pass the training classes for validation so the indices agree).
        transform: ``transform(image HWC uint8 RGB numpy, seed=...) -> tensor``
            (:func:`~detres.data.transforms.build_cls_train_transform` / ``build_cls_test_transform``).
        subtract: a per-pixel image ``[3, crop, crop]`` subtracted from the transform's output (every view):
            the mean image (already divided by the std), with a transform that subtracts a zero mean.
    """

    def __init__(self, root: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 transform: Callable[..., torch.Tensor] | None = None, subtract: torch.Tensor | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root}: ImageNet split folder not found (expected <root>/<wnid>/*.JPEG)")
        found = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if classes is None:
            classes = found
        else:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"{self.root}: class folders not among the training classes: {unknown[:5]}")
        if not classes:
            raise ValueError(f"{self.root}: no class folders")
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        for c in self.classes:
            folder = self.root / c
            if not folder.is_dir():
                continue
            names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                empty.append(c)
            self.samples.extend((os.fspath(folder / n), self.class_to_idx[c]) for n in names)
        if empty:  # a class without images would get an output it never learns (torchvision's ImageFolder refuses too)
            raise ValueError(f"{self.root}: class folder(s) without images ({IMAGE_EXTENSIONS}): {empty[:5]}"
                             f"{' ...' if len(empty) > 5 else ''}; remove them or add their images")
        if not self.samples:
            raise ValueError(f"{self.root}: no images with extensions {IMAGE_EXTENSIONS}")
        self.transform = transform
        self.subtract = subtract

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, index: int, *, seed: int | None = None) -> tuple[torch.Tensor, int]:
        """Item ``index`` with its augmentation seeded by ``seed`` (None: the transform's own state)."""
        path, label = self.samples[index]
        if self.transform is None:
            return read_image(path), label
        x = self.transform(read_image_rgb(path), seed=seed)
        if self.subtract is not None:
            if x.shape[-3:] != self.subtract.shape:
                raise ValueError(f"{path}: a view of {tuple(x.shape[-3:])} cannot take the mean image of "
                                 f"{tuple(self.subtract.shape)}")
            x = x - self.subtract
        return x, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.get(index)


class MultiScaleViews:
    """The test views of the fully-convolutional multi-scale test (He et al. 2015, Sec. 3.4): HWC uint8 ->
    ``[x_s for s in scales]``, each the whole image (no crop) resized so its shorter side is ``s`` (area
    averaging when shrinking), as float ``[3, h_s, w_s]`` with ``(x - mean) / std`` per channel."""

    def __init__(self, scales: Sequence[int], *, mean: Sequence[float], std: Sequence[float]):
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"multi-scale test: scales must be positive shorter sides, got {list(scales)}")
        self.scales = [int(s) for s in scales]
        self._resize = [ClassificationTransform([ShortSideResize(s, None, area_for_downscale=True)], mean=mean, std=std)
                        for s in self.scales]

    def __call__(self, image, *, seed: int | None = None) -> list[torch.Tensor]:
        return [t(image, seed=seed) for t in self._resize]


def list_collate(batch: Sequence[tuple[list[torch.Tensor], int]]) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """``[(views, label), ...] -> ([views, ...], labels int64 [B])``: views of different sizes stay a list."""
    return [views for views, _ in batch], torch.as_tensor([int(label) for _, label in batch], dtype=torch.int64)


def sum_images(batches) -> tuple[torch.Tensor, int]:
    """``(sum of the images [3, H, W] in float64, their number)`` over ``(images [B, V, 3, H, W] or
    [B, 3, H, W], labels)`` batches (the first view of each image): the parts of a mean image."""
    total, n = None, 0
    for images, _ in batches:
        if images.dim() == 5:
            images = images[:, 0]
        s = images.double().sum(dim=0)
        total = s if total is None else total + s
        n += images.shape[0]
    if total is None:
        raise ValueError("no images to average")
    return total, n
