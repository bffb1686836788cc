"""Transforms: one resize (600/1000 rule), exact flip, aligned fields, dropped boxes, to_original."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detres.data.transforms import build_transforms, to_original


def _target(boxes, labels=None):
    n = len(boxes)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels or list(range(1, n + 1))),
            "difficult": torch.tensor([i % 2 == 1 for i in range(n)]), "image_id": "000001"}


def test_resize_shorter_side_and_cap_longer_side():
    t = build_transforms(train=False)
    img, tgt = t(np.zeros((375, 500, 3), np.uint8), _target([[10, 20, 110, 220]]))
    assert img.shape == (3, 600, 800) and img.dtype == torch.float32
    assert tgt["size"].tolist() == [600, 800] and tgt["orig_size"].tolist() == [375, 500]
    np.testing.assert_allclose(tgt["boxes"].numpy(), [[16, 32, 176, 352]], atol=1e-4)
    # 1:4 image: shorter side 600 would make the longer 2400 > 1000 -> longer side 1000, shorter 250
    img, tgt = t(np.zeros((100, 400, 3), np.uint8), _target([]))
    assert tgt["size"].tolist() == [250, 1000]


def test_flip_moves_boxes_exactly():
    t = build_transforms(train=True, min_size=48, max_size=1000, flip_prob=1.0)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :8] = 255  # left stripe
    img, tgt = t(image, _target([[0, 4, 10, 20], [50, 0, 64, 48]]))
    # same size (scale 1), x -> 64 - x with x1/x2 swapped
    assert tgt["flipped"] is True
    np.testing.assert_allclose(tgt["boxes"].numpy(), [[54, 4, 64, 20], [0, 0, 14, 48]], atol=1e-4)
    assert img[:, :, -8:].min() == 1.0 and img[:, :, :-8].max() == 0.0  # the stripe moved right
    np.testing.assert_allclose(to_original(tgt["boxes"], tgt).numpy(), [[0, 4, 10, 20], [50, 0, 64, 48]], atol=1e-4)


def test_degenerate_boxes_are_dropped_and_fields_stay_aligned():
    t = build_transforms(train=False, min_size=100, max_size=1000)
    boxes = [[5, 5, 20, 20], [30, 30, 30, 40], [60, 40, 80, 70], [200, 10, 220, 20], [10, 10, 40, 30]]
    img, tgt = t(np.zeros((50, 100, 3), np.uint8), _target(boxes, labels=[1, 2, 3, 4, 5]))
    # box 2 has zero width; box 4 lies outside the 100x50 image (clipped to nothing)
    assert tgt["dropped_boxes"] == 2
    assert tgt["labels"].tolist() == [1, 3, 5]
    assert tgt["difficult"].tolist() == [False, False, False]  # difficult was [F, T, F, T, F]
    np.testing.assert_allclose(tgt["boxes"].numpy(), np.array([[5, 5, 20, 20], [60, 40, 80, 50], [10, 10, 40, 30]]) * 2,
                               atol=1e-4)
    # box 3 was clipped at the image's lower border (y2 70 -> 50) before scaling
    assert tgt["boxes"][1, 3].item() == pytest.approx(100.0)


def test_to_original_inverts_resize():
    t = build_transforms(train=False)
    _, tgt = t(np.zeros((333, 500, 3), np.uint8), _target([[12.5, 7, 480, 300]]))
    np.testing.assert_allclose(to_original(tgt["boxes"], tgt).numpy(), [[12.5, 7, 480, 300]], rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        build_transforms(train=True, flip_prob=2.0)
    with pytest.raises(ValueError, match="uint8"):
        build_transforms(train=False)(np.zeros((4, 4), np.float32), _target([]))


def test_to_tensor_and_normalize_are_the_one_conversion():
    from detres.data.transforms import normalize, to_tensor

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # HWC
    x = to_tensor(image)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert x[2, 1, 0].item() == np.float32(110) / np.float32(255)  # image[1, 0, 2] = 110, channel 2 of pixel (1, 0)
    out = normalize(x, [0.1, 0.2, 0.3], [2.0, 1.0, 0.5])
    torch.testing.assert_close(out[:, 1, 2], (x[:, 1, 2] - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([2.0, 1.0, 0.5]))
    mean_image = torch.rand(3, 2, 3)
    assert torch.equal(normalize(x, mean_image), x - mean_image)  # CIFAR's per-pixel mean image, no std


def test_pipeline_defaults_are_the_config_schemas():
    import inspect

    from detres.config import ClsDataConfig, DataConfig
    from detres.data.transforms import build_cls_test_transform, build_cls_train_transform

    det, cls = DataConfig(), ClsDataConfig()
    p = inspect.signature(build_transforms).parameters
    assert (p["min_size"].default, p["max_size"].default, p["flip_prob"].default) == (det.min_size, det.max_size,
                                                                                      det.flip_prob)
    p = inspect.signature(build_cls_train_transform).parameters
    assert (p["min_scale"].default, p["max_scale"].default, p["crop"].default, p["lighting"].default,
            list(p["mean"].default), list(p["std"].default)) == (cls.min_scale, cls.max_scale, cls.crop,
                                                                  cls.pca_lighting, cls.mean, cls.std)
    assert inspect.signature(build_cls_test_transform).parameters["resize"].default == cls.test_resize
