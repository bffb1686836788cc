"""CIFAR-10 from a local copy, in either official format, with the recipe of He et al. (2015), Sec. 4.2.

``root`` is the folder that holds ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``: pickles, read with a restricted unpickler that admits only the arrays, lists, strings and
numbers they hold) or ``cifar-10-batches-bin/`` (``data_batch_1..5.bin``, ``test_batch.bin``: records of one
label byte and 3072 pixel bytes, the red, green and blue 32x32 planes in row-major order;
``batches.meta.txt``), as the official archives unpack.

The recipe's data part: "the per-pixel mean subtracted" (the mean image of the training images in use),
"4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded image or its
horizontal flip" in training, seeded per item like detection's augmentation (``get(index, seed=...)``,
the training loader's stream seed); the single original view for testing. Optionally 45k/5k train/val: the last
``val_size`` training images (after a seeded shuffle) are held out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detres.config import ClsDataConfig
from detres.data.transforms import normalize, to_tensor
from detres.utils.io import safe_load_pickle

__all__ = ["CIFAR10_CLASSES", "read_cifar10", "CIFAR10", "write_synthetic_cifar", "digits"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CLS = ClsDataConfig()  # the schema's defaults
_RECORD = 1 + 3 * 32 * 32


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"{path}: CIFAR-10 batch file not found")
    batch = safe_load_pickle(path, encoding="bytes")
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict of b'data' and b'labels', got {type(batch).__name__}")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: no 'data' or 'labels' entry")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{path}: 'labels' must be {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"{path}: CIFAR-10 batch file not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {_RECORD}-byte records")
    records = raw.reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {int(labels.max())} is not a class 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar10(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` of ``split`` ("train": the five data batches,
    "test": the test batch) from ``root/cifar-10-batches-py`` or ``root/cifar-10-batches-bin``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    names = _TRAIN if split == "train" else ["test_batch"]
    if (root / "cifar-10-batches-py").is_dir():
        parts = [_read_py(root / "cifar-10-batches-py" / n) for n in names]
    elif (root / "cifar-10-batches-bin").is_dir():
        parts = [_read_bin(root / "cifar-10-batches-bin" / f"{n}.bin") for n in names]
    else:
        raise ValueError(f"{root}: neither cifar-10-batches-py/ nor cifar-10-batches-bin/ (unpack the official "
                         "CIFAR-10 archive there)")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CIFAR10(Dataset):
    """Items ``(image float32 [3, 32, 32] minus the mean image, label int)``.

    Args:
        images, labels: from :func:`read_cifar10` (or any uint8 [N, 3, H, W] and int labels).
        mean: the per-pixel mean image (float32 [3, H, W] in [0, 1]) to subtract: the training set's.
        train: pad ``padding`` pixels with zeros (after mean subtraction: the mean), crop at random, and flip
            (``flip``) half of the images.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, mean: np.ndarray, train: bool,
                 padding: int = _CLS.padding, flip: bool = True, classes: Sequence[str] = CIFAR10_CLASSES):
        if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(labels):
            raise ValueError(f"images must be [N, 3, H, W] with one label each, got {images.shape}, {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.train, self.padding, self.flip = train, padding, flip
        self.classes = list(classes)
        self._rng = np.random.default_rng()

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int, *, seed: int | None = None) -> tuple[torch.Tensor, int]:
        """Item ``index``; in training its padding offset and flip are drawn from
        ``numpy.random.default_rng(seed)`` (None: the data set's own generator), never from a global RNG."""
        x = normalize(to_tensor(self.images[index].transpose(1, 2, 0)), self.mean)
        if self.train:
            rng = self._rng if seed is None else np.random.default_rng(seed)
            p = self.padding
            h, w = x.shape[1:]
            if p:
                x = torch.nn.functional.pad(x, (p, p, p, p))
            i, j = (int(v) for v in rng.integers(0, 2 * p + 1, 2))
            x = x[:, i:i + h, j:j + w]
            if self.flip and rng.random() < 0.5:
                x = x.flip(2)
        return x.contiguous(), int(self.labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.get(index)

    @staticmethod
    def mean_image(images: np.ndarray) -> np.ndarray:
        """The per-pixel mean of uint8 images [N, 3, H, W], as float32 [3, H, W] in [0, 1]."""
        return (images.astype(np.float64).mean(axis=0) / 255.0).astype(np.float32)

    @classmethod
    def build(cls, root: str | os.PathLike, *, val_size: int = _CLS.val_size, seed: int = 0, padding: int = _CLS.padding
              ) -> tuple["CIFAR10", "CIFAR10"]:
        """(train set, evaluation set): the test set, or with ``val_size`` > 0 the held-out training images
        (the paper's 45k/5k split for choosing hyper-parameters). The mean image is the training part's."""
        images, labels = read_cifar10(root, "train")
        if val_size:
            if not 0 < val_size < len(labels):
                raise ValueError(f"val_size must be in 1..{len(labels) - 1}, got {val_size}")
            order = np.random.default_rng(seed).permutation(len(labels))
            tr, va = order[:-val_size], order[-val_size:]
            eval_images, eval_labels = images[va], labels[va]
            images, labels = images[tr], labels[tr]
        else:
            eval_images, eval_labels = read_cifar10(root, "test")
        mean = cls.mean_image(images)
        return (cls(images, labels, mean=mean, train=True, padding=padding),
                cls(eval_images, eval_labels, mean=mean, train=False))


def digits(*, test_size: int = 297, seed: int = 0) -> tuple[CIFAR10, CIFAR10]:
    """scikit-learn's 8x8 handwritten digits (1797 images, ships inside the package: no download) as a
    CIFAR-style pair (train, test): grey levels 0..16 scaled to 0..240 and repeated to 3 channels, the
    training set's mean image subtracted, no augmentation (digits are not mirror-symmetric)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.repeat((d.images * 15).astype(np.uint8)[:, None], 3, axis=1)
    order = np.random.default_rng(seed).permutation(len(images))
    te, tr = order[:test_size], order[test_size:]
    mean = CIFAR10.mean_image(images[tr])
    names = tuple(str(i) for i in range(10))
    return (CIFAR10(images[tr], d.target[tr], mean=mean, train=True, padding=0, flip=False, classes=names),
            CIFAR10(images[te], d.target[te], mean=mean, train=False, classes=names))


def write_synthetic_cifar(root: str | os.PathLike, fmt: str = "py", *, num_train: int = 50, num_test: int = 20,
                          seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 copy in the official ``fmt`` ("py" or "bin") layout under ``root``: random
    images whose class decides a colour bias (learnable), for tests and smoke runs. Returns ``root``."""
    import pickle

    rng = np.random.default_rng(seed)
    root = Path(root)
    folder = root / ("cifar-10-batches-py" if fmt == "py" else "cifar-10-batches-bin")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 100, (n, 3, 32, 32), dtype=np.uint8)
        images[np.arange(n), labels % 3] += (60 + 15 * (labels // 3)).astype(np.uint8)[:, None, None]
        return images, labels

    per = [num_train // 5 + (1 if i < num_train % 5 else 0) for i in range(5)]
    for name, n in [*zip(_TRAIN, per), ("test_batch", num_test)]:
        images, labels = batch(n)
        if fmt == "py":
            with open(folder / name, "wb") as f:  # protocol 2 with bytes keys, as the official pickles
                pickle.dump({b"data": images.reshape(n, -1), b"labels": labels.tolist(),
                             b"batch_label": name.encode()}, f, protocol=2)
        elif fmt == "bin":
            np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(n, -1)], axis=1).tofile(folder / f"{name}.bin")
        else:
            raise ValueError(f"fmt must be 'py' or 'bin', got {fmt!r}")
    if fmt == "py":
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f, protocol=2)
    else:
        (folder / "batches.meta.txt").write_text("".join(c + "\n" for c in CIFAR10_CLASSES))
    return root
