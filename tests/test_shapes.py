"""The synthetic VOC tree: deterministic, idempotent, read by the VOC code path."""
from __future__ import annotations

import numpy as np

from detres.data.shapes import SHAPES_CLASSES, _draw_image, generate_shapes_voc
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
    """What VOCDetection reads is what the generator drew: the same pixels (RGB, up to JPEG loss), the same
    boxes (0-based inclusive pixels -> VOC 1-based -> xyxy with the right edge one past the last pixel) and
    classes, and every shape stands out from the background it was drawn on."""
    seed, num_train, size = 1, 5, 64
    root = generate_shapes_voc(tmp_path / "s", num_train=num_train, num_test=4, image_size=size, min_objects=1,
                               max_objects=3, seed=seed)
    train = VOCDetection(root, split="train", class_names=SHAPES_CLASSES)
    test = VOCDetection(root, split="test", class_names=SHAPES_CLASSES, keep_difficult=True)
    assert len(train) == 5 and len(test) == 4 and set(train.ids).isdisjoint(test.ids)
    for i in range(len(test)):
        image, t = test[i]
        # the generator's own stream for image num_train + i (a pure function of the seed and the index)
        rng = np.random.default_rng([seed, num_train + i])
        drawn_bgr, objects = _draw_image(rng, size, size, int(rng.integers(1, 4)), 0.0)
        drawn = drawn_bgr[..., ::-1].astype(np.int64)  # OpenCV draws BGR; the data set gives RGB
        assert t["image_id"] == f"{num_train + i:06d}" and image.shape == (size, size, 3) and image.dtype == np.uint8
        assert t["labels"].tolist() == [SHAPES_CLASSES.index(name) + 1 for name, _, _ in objects]
        assert t["boxes"].tolist() == [[x1, y1, x2 + 1, y2 + 1] for _, (x1, y1, x2, y2), _ in objects]
        assert not t["difficult"].any()
        # JPEG at quality 95 on a noisy texture: ~8 grey levels on average; BGR/RGB swapped: 35 and more
        assert np.abs(image - drawn).mean() < 15
        outside = np.ones((size, size), bool)
        for _, (x1, y1, x2, y2), _ in objects:
            outside[y1:y2 + 1, x1:x2 + 1] = False
        background = np.median(image[outside], axis=0)
        for _, (x1, y1, x2, y2), _ in objects:
            # the 3x3 pixels at the box centre lie inside a circle, a square and a triangle alike: the shape's
            # colour (as drawn, up to JPEG loss), far from the background's (the generator keeps 70 grey levels
            # from the background's base colour on average; 50 leaves room for the texture)
            cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
            centre = image[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
            assert np.abs(centre - drawn[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)).max() < 12
            assert np.abs(centre - background).mean() >= 50
    assert np.isclose(test.aspect_ratios(), 1.0).all()
