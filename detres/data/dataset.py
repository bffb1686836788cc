"""The detection data-set contract, and one concatenation for every format.

An item is ``(image, target)``. :meth:`DetectionDataset.load` gives the raw item: ``image`` HWC uint8
RGB (numpy) in the file's own pixel grid, ``target = {"boxes": float32 [N, 4] xyxy 0-based pixels,
"labels": int64 [N] in 1..K (0 is the background), "image_id": str | int, ...}``. Indexing applies the
data set's ``transforms``; :meth:`DetectionDataset.get` does the same with an explicit augmentation seed,
which is how the training loader makes every augmentation a function of the item's place in the stream.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

__all__ = ["DetectionDataset", "ConcatDetection"]


class DetectionDataset(Dataset):
    """Base class of the VOC and COCO data sets.

    Subclasses set ``class_names`` (K names; label ``i + 1`` is ``class_names[i]``), ``transforms``
    (``transforms(image, target, seed=...) -> (tensor, target)`` or None) and implement ``__len__``,
    :meth:`load` and :meth:`aspect_ratios` (``width / height`` per item without decoding images).
    """

    class_names: tuple[str, ...] = ()
    transforms: Callable[..., tuple[Any, dict]] | None = None

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        """The raw item: (HWC uint8 RGB image, target in its pixels)."""
        raise NotImplementedError

    def aspect_ratios(self) -> list[float]:
        raise NotImplementedError

    def get(self, index: int, *, seed: int | None = None) -> tuple[Any, dict]:
        """Item ``index`` with its transforms seeded by ``seed`` (None: the transforms' own state)."""
        image, target = self.load(index)
        if self.transforms is None:
            return image, target
        return self.transforms(image, target, seed=seed)

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        return self.get(index)


class ConcatDetection(ConcatDataset):
    """Several detection data sets as one (VOC 07+12, several COCO files); all share ``class_names``."""

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        datasets = list(datasets)
        super().__init__(datasets)
        names = {tuple(d.class_names) for d in datasets}
        if len(names) != 1:
            raise ValueError(f"cannot concatenate data sets with different class names: {sorted(names)}")
        self.class_names = tuple(datasets[0].class_names)
        self.ids = [i for d in datasets for i in getattr(d, "ids", range(len(d)))]

    def _locate(self, index: int) -> tuple[DetectionDataset, int]:
        if index < 0:
            index += len(self)
        part = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        start = 0 if part == 0 else self.cumulative_sizes[part - 1]
        return self.datasets[part], index - start

    def get(self, index: int, *, seed: int | None = None) -> tuple[Any, dict]:
        part, local = self._locate(index)
        return part.get(local, seed=seed)

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        return self.get(index)

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        part, local = self._locate(index)
        return part.load(local)

    def aspect_ratios(self) -> list[float]:
        return [r for d in self.datasets for r in d.aspect_ratios()]

    def get_annotation(self, index: int):
        """The part's full annotation of item ``index`` (VOC parts only)."""
        part, local = self._locate(index)
        return part.get_annotation(local)
