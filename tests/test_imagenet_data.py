"""ImageNet folder reading, the paper's augmentation (seeded per item) and detection's loaders on it."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

import albumentations as A

from detres.data.imagenet import ImageNetFolder
from detres.data.loader import build_test_loader, build_train_loader, stack_collate
from detres.data.transforms import (CENTER_VIEW, PCA_EIGVAL, PCA_EIGVEC, Lighting, ShortSideResize,
                                    build_cls_test_transform as build_test_transform,
                                    build_cls_train_transform as build_train_transform)


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


def test_scale_augmentation_range_is_seeded():
    resize = A.Compose([ShortSideResize(list(range(36, 45)), None, area_for_downscale=True)])
    image = np.zeros((50, 80, 3), np.uint8)
    seen = {}
    for seed in range(40):
        resize.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = resize(image=image)["image"]
        assert 36 <= out.shape[0] <= 44 and out.shape[1] == round(80 * out.shape[0] / 50)  # aspect kept
        seen[seed] = out.shape[0]
    for seed in (7, 23):  # the same seed, the same scale: the choice is the seeded state's alone
        resize.set_random_state(np.random.default_rng(seed), random.Random(seed))
        assert resize(image=image)["image"].shape[0] == seen[seed]
    assert len(set(seen.values())) > 3


def test_lighting_adds_the_pca_offset_of_the_seeded_draw():
    image = torch.rand(3, 8, 8)
    assert torch.equal(Lighting(0.0)(image, np.random.default_rng(0)), image)
    out = Lighting(0.1)(image, np.random.default_rng(5))
    delta = out - image
    offset = delta[:, 0, 0]
    assert torch.allclose(delta, offset.view(3, 1, 1).expand_as(delta), atol=1e-6)  # same shift for every pixel
    alpha = torch.linalg.solve(PCA_EIGVEC, offset) / PCA_EIGVAL  # back to the N(0, 0.1) coefficients
    expected = torch.from_numpy(np.random.default_rng(5).normal(0.0, 0.1, 3)).float()
    torch.testing.assert_close(alpha, expected, atol=1e-4, rtol=1e-3)


def test_train_and_test_transforms_shapes_and_normalisation():
    image = np.full((40, 50, 3), 255, dtype=np.uint8)
    t = build_train_transform(min_scale=36, max_scale=44, crop=32, lighting=0.0, mean=(0.5, 0.5, 0.5), std=(0.5, 1.0, 2.0))
    out = t(image, seed=0)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, 0.5, 0.25]))  # (1 - mean) / std
    # 36x44 -> even margins around the 32 crops, so the centre crop of the mirror image is the exact mirror
    rng = np.random.default_rng(0)
    ten = build_test_transform(resize=36, crop=32)(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8))
    assert ten.shape == (10, 3, 32, 32)
    # The second five are the first five's mirror images (the flip of the top-left crop is the
    # top-right crop of the flipped image): tl<->tr, bl<->br, centre<->centre.
    for a, b in ((0, 6), (1, 5), (2, 8), (3, 7), (4, 9)):
        torch.testing.assert_close(ten[b], ten[a].flip(-1))
    with pytest.raises(ValueError, match="larger than the smallest scale"):
        build_train_transform(min_scale=20, max_scale=30, crop=32)
    with pytest.raises(ValueError, match="HWC uint8"):
        t(torch.zeros(3, 40, 50, dtype=torch.uint8))


def test_test_centre_view_equals_the_single_centre_crop():
    image = np.random.default_rng(1).integers(0, 255, (47, 61, 3), dtype=np.uint8)
    ten = build_test_transform(resize=40, crop=32)(image)
    one = build_test_transform(resize=40, crop=32, ten_crop=False)(image)
    assert one.shape == (1, 3, 32, 32) and torch.equal(ten[CENTER_VIEW], one[0])
    # the view is the 32x32 centre of the 40x52 resize, (x - mean) / std with the schema's defaults
    from detres.config import ClsDataConfig
    from detres.data.transforms import to_tensor
    resized = A.Compose([ShortSideResize(40, None, area_for_downscale=True)])(image=image)["image"]
    assert resized.shape == (40, 52, 3)
    mean = torch.tensor(ClsDataConfig().mean).view(3, 1, 1)
    assert torch.equal(one[0], to_tensor(resized)[:, 4:36, 10:42] - mean)


def test_train_items_are_a_function_of_the_seed_alone(tmp_path):
    make_folder(tmp_path)
    train = ImageNetFolder(tmp_path / "train", transform=build_train_transform(min_scale=36, max_scale=44, crop=32))
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a, b, c = train.get(2, seed=11)[0], train.get(2, seed=11)[0], train.get(2, seed=12)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state[0], torch.get_rng_state()) and (state[1] == np.random.get_state()[1]).all()
    assert state[2] == random.getstate()  # no global RNG was read


def test_detection_loaders_serve_imagenet(tmp_path):
    make_folder(tmp_path)
    train = ImageNetFolder(tmp_path / "train", transform=build_train_transform(min_scale=36, max_scale=44, crop=32))

    def batches(n, **kw):
        it = build_train_loader(train, images_per_batch=4, seed=3, aspect_ratio_grouping=False,
                                collate_fn=stack_collate, **kw)
        return [next(it) for _ in range(n)]

    full = batches(5)
    images, labels = full[0]
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64 and labels.shape == (4,)
    resumed = batches(2, start_iter=3)  # resumes mid-stream: same images, same augmentation
    for (x, y), (u, v) in zip(full[3:], resumed):
        assert torch.equal(x, u) and torch.equal(y, v)
    val = ImageNetFolder(tmp_path / "val", classes=train.classes,
                         transform=build_test_transform(resize=36, crop=32, ten_crop=False))
    parts = [list(build_test_loader(val, batch_size=2, collate_fn=stack_collate, rank=r, world_size=2)) for r in (0, 1)]
    labels = [int(v) for part in parts for _, lab in part for v in lab]
    assert labels == [label for _, label in val.samples]  # the two shards cover the set once, in order
    assert parts[0][0][0].shape == (2, 1, 3, 32, 32)
