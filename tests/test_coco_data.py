"""COCO reading: contiguous labels with gapped ids, crowd, empty images, xywh -> xyxy, degenerate."""
from __future__ import annotations

import pytest

from detres.data.coco import COCODetection
from tests._data_helpers import write_coco


def test_labels_boxes_and_filtering(tmp_path):
    image_dir, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90))
    train = COCODetection(image_dir, ann, train=True)
    # image 3 (no annotation) and image 7 (only a degenerate box) are skipped for training
    assert train.ids == [1, 2]
    assert train.class_names == ("cat1", "cat5", "cat90")
    assert train.cat_id_to_label == {1: 1, 5: 2, 90: 3}
    assert train.label_to_cat_id == {1: 1, 2: 5, 3: 90}
    image, t = train[0]
    assert image.shape == (60, 80, 3) and t["image_id"] == 1
    assert t["boxes"].tolist() == [[10, 5, 40, 25], [40, 30, 75, 55]]
    assert t["labels"].tolist() == [1, 3]
    _, t2 = train[1]  # the crowd region is not a target
    assert t2["boxes"].tolist() == [[5, 10, 45, 60]] and t2["labels"].tolist() == [2]
    test = COCODetection(image_dir, ann, train=False)
    assert test.ids == [1, 2, 3, 7]
    assert test[3][1]["boxes"].shape == (0, 4)
    assert test.aspect_ratios() == pytest.approx([80 / 60, 60 / 80, 1.0, 50 / 40])


def test_missing_files(tmp_path):
    image_dir, ann, _ = write_coco(tmp_path)
    with pytest.raises(ValueError, match="nope.json"):
        COCODetection(image_dir, tmp_path / "nope.json", train=True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        COCODetection(image_dir, tmp_path / "bad.json", train=True)
