"""ImageNet folder reading, the paper's augmentation and the resumable, rank-disjoint batch sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detres.data.imagenet import (CENTER_VIEW, PCA_EIGVAL, PCA_EIGVEC, ImageNetFolder, Lighting, RandomShorterSide,
                                  build_test_transform, build_train_transform)
from detres.data.samplers import InfiniteBatchSampler as TrainBatchSampler


def make_folder(root, classes=("n01", "n02", "n03"), per_class=3, size=(40, 52)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{c}_{i}.JPEG", format="JPEG")
    return root


def test_folder_classes_and_labels(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "n02" / "notes.txt").write_text("not an image")
    train = ImageNetFolder(tmp_path / "train")
    assert train.classes == ["n01", "n02", "n03"] and len(train) == 9
    image, label = train[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 52) and label == 1
    val = ImageNetFolder(tmp_path / "val", classes=["n00"] + train.classes)  # indices follow the given list
    assert val[0][1] == 1
    with pytest.raises(ValueError, match="not among the training classes"):
        ImageNetFolder(tmp_path / "train", classes=["n01"])
    with pytest.raises(ValueError, match="missing"):
        ImageNetFolder(tmp_path / "missing")


def test_scale_augmentation_range():
    t = RandomShorterSide(36, 44)
    seen = set()
    for _ in range(60):
        out = t(torch.zeros(3, 50, 80, dtype=torch.uint8))
        assert 36 <= out.shape[1] <= 44
        assert abs(out.shape[2] / out.shape[1] - 80 / 50) < 0.05  # aspect ratio kept
        seen.add(out.shape[1])
    assert len(seen) > 3


def test_lighting_adds_a_pca_colour_offset():
    image = torch.rand(3, 8, 8)
    assert torch.equal(Lighting(0.0)(image), image)
    out = Lighting(0.1)(image)
    delta = out - image
    offset = delta[:, 0, 0]
    assert torch.allclose(delta, offset.view(3, 1, 1).expand_as(delta), atol=1e-6)  # same shift for every pixel
    alpha = torch.linalg.solve(PCA_EIGVEC, offset) / PCA_EIGVAL  # back to the N(0, 0.1) coefficients
    assert alpha.abs().max() < 1.0 and offset.abs().sum() > 0


def test_train_and_test_transforms_shapes_and_normalisation():
    image = torch.full((3, 40, 50), 255, dtype=torch.uint8)
    t = build_train_transform(min_scale=36, max_scale=44, crop=32, lighting=0.0, mean=(0.5, 0.5, 0.5), std=(0.5, 1.0, 2.0))
    out = t(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, 0.5, 0.25]))  # (1 - mean) / std
    # 36x44 -> even margins around the 32 crops, so the centre crop of the mirror image is the exact mirror
    ten = build_test_transform(resize=36, crop=32)(torch.randint(0, 255, (3, 36, 44), dtype=torch.uint8))
    assert ten.shape == (10, 3, 32, 32)
    # The second five are the first five's mirror images (the flip of the top-left crop is the
    # top-right crop of the flipped image): tl<->tr, bl<->br, centre<->centre.
    for a, b in ((0, 6), (1, 5), (2, 8), (3, 7), (4, 9)):
        torch.testing.assert_close(ten[b], ten[a].flip(-1))
    with pytest.raises(ValueError):
        build_train_transform(min_scale=20, max_scale=30, crop=32)


def test_test_centre_view_equals_the_single_centre_crop():
    image = torch.randint(0, 255, (3, 47, 61), dtype=torch.uint8)
    ten = build_test_transform(resize=40, crop=32)(image)
    one = build_test_transform(resize=40, crop=32, ten_crop=False)(image)
    assert one.shape == (1, 3, 32, 32) and torch.equal(ten[CENTER_VIEW], one[0])


def test_batch_sampler_resumes_and_splits_ranks():
    full = iter(TrainBatchSampler(23, batch_size=2, world_size=2, rank=0, seed=3))
    first = [next(full) for _ in range(12)]  # crosses an epoch boundary (5 global batches per epoch)
    resumed = iter(TrainBatchSampler(23, batch_size=2, world_size=2, rank=0, seed=3, start_iter=7))
    assert [next(resumed) for _ in range(5)] == first[7:]
    other = iter(TrainBatchSampler(23, batch_size=2, world_size=2, rank=1, seed=3))
    for mine, theirs in zip(first[:5], [next(other) for _ in range(5)]):
        assert not set(mine) & set(theirs)
    epoch0 = [i for b in first[:5] for i in b]
    assert len(set(epoch0)) == 10  # no repeats within an epoch on this rank
    with pytest.raises(ValueError, match="cannot fill one batch"):
        TrainBatchSampler(3, batch_size=2, world_size=2)
