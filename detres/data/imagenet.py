"""ImageNet classification data: folder reading, the paper's augmentation, and the loaders.

Layout (ImageFolder): ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``; the class index is
the position of the wnid in the sorted list of training folders, and validation uses the same list.

Training augmentation, He et al. (2015) Sec. 3.4, which follows Krizhevsky et al. (2012) and
Simonyan & Zisserman (2015):

1. scale augmentation: the shorter side is resized to a random integer in [256, 480];
2. a random 224x224 crop and a horizontal flip with probability 0.5;
3. the standard colour augmentation of AlexNet: PCA lighting noise (:class:`Lighting`);
4. mean subtraction. The paper subtracts the per-pixel mean image; with random scales and crops that
   mean image is flat to within noise, so the per-channel ImageNet mean is subtracted. The paper does
   not divide by a standard deviation, so :data:`PAPER_STD` is 1 (BN after conv1 absorbs the scale).

Images are RGB float in [0, 1] before normalisation: the weights meta of a classifier trained on
these tensors is ``{"channel_order": "RGB", "input_range": 1.0, "mean": ..., "std": ...}``.

Test views: the shorter side is resized to 256, then either the centre 224 crop (1 view) or the
10-crop of the paper (4 corners and the centre of the image and of its mirror image: 10 views). One item is a tensor
``[V, 3, 224, 224]``; in 10-crop mode view :data:`CENTER_VIEW` is exactly the centre crop.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from detres.data.loader import worker_init
from detres.data.transforms import pil_to_rgb8
from detres.data.samplers import InfiniteBatchSampler, shard_range

__all__ = [
    "IMAGE_EXTENSIONS", "PAPER_MEAN", "PAPER_STD", "PCA_EIGVAL", "PCA_EIGVEC", "CENTER_VIEW",
    "ImageNetFolder", "Lighting", "RandomShorterSide", "TenCrop", "CenterCropView",
    "build_train_transform", "build_test_transform", "build_train_loader_factory", "build_test_loader",
    "read_image",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")

#: ImageNet per-channel mean of RGB in [0, 1] (the per-pixel mean image averaged over the crop).
PAPER_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: The paper subtracts the mean only.
PAPER_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)

#: AlexNet's PCA of ImageNet RGB pixels in [0, 1]: eigenvalues and eigenvectors (columns), RGB order.
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])

#: Index of the un-flipped centre crop among the 10 views (order: tl, tr, bl, br, centre, then flipped).
CENTER_VIEW = 4


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to ``uint8 [3, H, W]`` RGB (16-bit and float images scaled, not clipped: see
    :func:`detres.data.transforms.pil_to_rgb8`); ValueError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:  # PIL also reads ImageNet's few CMYK JPEGs and PNGs named .JPEG
            im.load()
            return torch.from_numpy(pil_to_rgb8(im)).permute(2, 0, 1).contiguous()
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file; say which
        raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


class ImageNetFolder(Dataset):
    """``root/<wnid>/*.JPEG`` -> items ``(transform(image uint8 [3,H,W] RGB), label int)``.

    Args:
        root: the split folder (e.g. ``imagenet/train``).
        classes: class folder names in index order; None = the sorted sub-folders of ``root``
            (pass the training classes for validation so the indices agree).
        transform: applied to the uint8 image tensor.
    """

    def __init__(self, root: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class Lighting(torch.nn.Module):
    """AlexNet PCA lighting: add ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)``.

    Input and output: float ``[3, H, W]`` RGB in the [0, 1] scale (not clamped, as in AlexNet).
    ``alphastd = 0`` disables it.
    """

    def __init__(self, alphastd: float = 0.1, *, eigval: torch.Tensor = PCA_EIGVAL, eigvec: torch.Tensor = PCA_EIGVEC):
        super().__init__()
        if alphastd < 0:
            raise ValueError(f"lighting alphastd must be >= 0, got {alphastd}")
        self.alphastd = float(alphastd)
        self.register_buffer("eigval", eigval.clone().float(), persistent=False)
        self.register_buffer("eigvec", eigvec.clone().float(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return image
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return image + rgb.to(image.dtype).view(3, 1, 1)


class RandomShorterSide(torch.nn.Module):
    """Resize so that the shorter side is a random integer in ``[min_size, max_size]`` (aspect kept)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got [{min_size}, {max_size}]")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = random.randint(self.min_size, self.max_size)
        return TF.resize(image, [size], antialias=True)


class TenCrop(torch.nn.Module):
    """``[3, H, W]`` -> ``[10, 3, size, size]``: tl, tr, bl, br, centre of the image, then of its mirror image."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack(TF.ten_crop(image, [self.size, self.size]))


class CenterCropView(torch.nn.Module):
    """``[3, H, W]`` -> ``[1, 3, size, size]``: the single centre crop as a one-view stack."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return TF.center_crop(image, [self.size, self.size]).unsqueeze(0)


def build_train_transform(*, min_scale: int = 256, max_scale: int = 480, crop: int = 224,
                          lighting: float = 0.1, flip_prob: float = 0.5,
                          mean: Sequence[float] = PAPER_MEAN, std: Sequence[float] = PAPER_STD) -> v2.Compose:
    """uint8 ``[3, H, W]`` -> float ``[3, crop, crop]``: scale aug, random crop, flip, lighting, mean."""
    if crop > min_scale:
        raise ValueError(f"crop {crop} is larger than the smallest scale {min_scale}")
    return v2.Compose([
        RandomShorterSide(min_scale, max_scale),
        v2.RandomCrop(crop),
        v2.RandomHorizontalFlip(flip_prob),
        v2.ToDtype(torch.float32, scale=True),
        Lighting(lighting),
        v2.Normalize(list(mean), list(std)),
    ])


def build_test_transform(*, resize: int = 256, crop: int = 224, ten_crop: bool = True,
                         mean: Sequence[float] = PAPER_MEAN, std: Sequence[float] = PAPER_STD) -> v2.Compose:
    """uint8 ``[3, H, W]`` -> float ``[V, 3, crop, crop]`` with V = 10 (10-crop) or 1 (centre crop)."""
    if crop > resize:
        raise ValueError(f"test crop {crop} is larger than the test resize {resize}")
    return v2.Compose([
        v2.Resize(resize, antialias=True),
        TenCrop(crop) if ten_crop else CenterCropView(crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def build_train_loader_factory(dataset: Dataset, *, batch_size: int, num_workers: int = 4, seed: int = 0,
                               rank: int = 0, world_size: int = 1, pin_memory: bool = False
                               ) -> Callable[[int], DataLoader]:
    """``f(start_iter)`` -> an infinite DataLoader of ``(images [B,3,crop,crop], labels [B])`` batches."""

    def factory(start_iter: int) -> DataLoader:
        sampler = InfiniteBatchSampler(len(dataset), batch_size=batch_size, seed=seed, rank=rank,
                                       world_size=world_size, start_iter=start_iter)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                          worker_init_fn=worker_init if num_workers > 0 else None, persistent_workers=False)

    return factory


def build_test_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 4, rank: int = 0,
                      world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Batches ``(views [B, V, 3, crop, crop], labels [B])``; this rank's :func:`shard_range` slice, in order."""
    indices = list(shard_range(len(dataset), rank, world_size))
    return DataLoader(dataset, batch_sampler=BatchSampler(indices, batch_size, drop_last=False),
                      num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=worker_init if num_workers > 0 else None)

