"""The synthetic VOC tree: deterministic, idempotent, read by the VOC code path."""
from __future__ import annotations

import numpy as np

from detres.data.shapes import SHAPES_CLASSES, generate_shapes_voc
from detres.data.voc import VOCDetection


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    a = generate_shapes_voc(tmp_path / "a", num_train=6, num_test=3, image_size=(48, 64), seed=7)
    b = generate_shapes_voc(tmp_path / "b", num_train=6, num_test=3, image_size=(48, 64), seed=7)
    c = generate_shapes_voc(tmp_path / "c", num_train=6, num_test=3, image_size=(48, 64), seed=8)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys() and fa != fc


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    root = generate_shapes_voc(tmp_path / "s", num_train=4, num_test=2, image_size=32)
    stamp = (root / "JPEGImages" / "000000.jpg").stat().st_mtime_ns
    generate_shapes_voc(tmp_path / "s", num_train=4, num_test=2, image_size=32)
    assert (root / "JPEGImages" / "000000.jpg").stat().st_mtime_ns == stamp
    generate_shapes_voc(tmp_path / "s", num_train=2, num_test=1, image_size=32)
    assert len(list((root / "JPEGImages").iterdir())) == 3


def test_read_through_voc_dataset(tmp_path):
    root = generate_shapes_voc(tmp_path / "s", num_train=5, num_test=4, image_size=64, min_objects=1,
                               max_objects=3, seed=1)
    train = VOCDetection(root, split="train", class_names=SHAPES_CLASSES)
    test = VOCDetection(root, split="test", class_names=SHAPES_CLASSES, keep_difficult=True)
    assert len(train) == 5 and len(test) == 4 and set(train.ids).isdisjoint(test.ids)
    for i in range(len(test)):
        image, t = test[i]
        assert image.shape == (64, 64, 3)
        n = len(t["labels"])
        assert 1 <= n <= 3 and set(t["labels"].tolist()) <= {1, 2, 3}
        b = t["boxes"].numpy()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 2] > b[:, 0]).all()
        # the object is really drawn: its box region differs from the image outside on average
        x1, y1, x2, y2 = b[0].astype(int)
        assert image[y1:y2, x1:x2].std() > 0
    assert np.isclose(test.aspect_ratios(), 1.0).all()
