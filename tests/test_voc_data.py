"""VOC reading: box conversion, difficult handling, XML quirks, 07+12, layouts, errors."""
from __future__ import annotations

import numpy as np
import pytest

from detres.data.dataset import ConcatDetection as VOCConcatDataset
from detres.data.voc import VOC_CLASSES, VOCDetection, build_voc, find_voc_dir, parse_voc_xml
from tests._data_helpers import write_voc_tree


def test_boxes_are_converted_like_detectron2_and_difficult_kept(tmp_path):
    root = write_voc_tree(tmp_path / "VOC2007", {
        "000005": {"size": (64, 48), "objects": [("cat", 1, 2, 30, 40, 0), ("dog", 10, 10, 20, 20, 1)]},
    }, split="trainval")
    ds = VOCDetection(root, split="trainval")
    assert ds.ids == ["000005"] and len(VOC_CLASSES) == 20
    image, t = ds[0]
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    # training default leaves the difficult dog out
    assert t["boxes"].tolist() == [[0.0, 1.0, 30.0, 40.0]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("cat") + 1]
    assert t["difficult"].tolist() == [False] and t["image_id"] == "000005"
    ev = VOCDetection(root, split="trainval", keep_difficult=True)
    _, t = ev[0]
    assert t["boxes"].tolist() == [[0.0, 1.0, 30.0, 40.0], [9.0, 9.0, 20.0, 20.0]]
    assert t["difficult"].tolist() == [False, True]
    assert ev.aspect_ratios() == [64 / 48]


def test_xml_quirks(tmp_path):
    xml = tmp_path / "q.xml"
    xml.write_text(
        "<annotation><size><width>100</width><height>50</height></size><owner>x</owner>"
        "<object><name>cat</name><bndbox><xmin>10.5</xmin><ymin>3.0</ymin><xmax>20.25</xmax><ymax>9</ymax></bndbox>"
        "<extra><a>1</a></extra></object>"
        "<object><name> dog </name><difficult></difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
        "<ymax>2</ymax></bndbox></object></annotation>")
    a = parse_voc_xml(xml, VOC_CLASSES)
    np.testing.assert_allclose(a.boxes, [[9.5, 2.0, 20.25, 9.0], [0.0, 0.0, 2.0, 2.0]])
    assert a.difficult.tolist() == [False, False]  # missing / empty <difficult> means 0
    assert (a.width, a.height) == (100, 50)
    empty = tmp_path / "e.xml"
    empty.write_text("<annotation><size><width>10</width><height>10</height></size></annotation>")
    e = parse_voc_xml(empty, VOC_CLASSES)
    assert e.boxes.shape == (0, 4) and e.labels.shape == (0,)


@pytest.mark.parametrize("text,needle", [
    ("<annotation><object>", "malformed XML"),
    ("<annotation><object><name>unicorn</name></object></annotation>", "unknown class 'unicorn'"),
    ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object></annotation>", "no <ymin>"),
])
def test_bad_xml_names_the_file(tmp_path, text, needle):
    xml = tmp_path / "bad.xml"
    xml.write_text(text)
    with pytest.raises(ValueError, match="bad.xml") as info:
        parse_voc_xml(xml, VOC_CLASSES)
    assert needle in str(info.value)


def test_missing_annotation_names_image_set_and_line(tmp_path):
    root = write_voc_tree(tmp_path / "VOC2007", {"a": {}, "b": {}})
    (root / "Annotations" / "b.xml").unlink()
    with pytest.raises(ValueError, match=r"test.txt:2: id 'b' has no annotation"):
        VOCDetection(root, split="test")


def test_07_plus_12_concatenation_and_both_layouts(tmp_path):
    write_voc_tree(tmp_path / "VOC2007", {"000001": {"objects": [("cat", 1, 1, 5, 5, 0)]}}, split="trainval")
    write_voc_tree(tmp_path / "VOCdevkit" / "VOC2012", {"2008_000002": {"size": (30, 60), "objects": [
        ("dog", 1, 1, 5, 5, 0)]}, "2008_000003": {}}, split="trainval")
    assert find_voc_dir(tmp_path, 2012) == tmp_path / "VOCdevkit" / "VOC2012"
    ds = build_voc(tmp_path, ("2007_trainval", "2012_trainval"))
    assert isinstance(ds, VOCConcatDataset) and len(ds) == 3
    assert ds.class_names == VOC_CLASSES
    assert ds.ids == ["000001", "2008_000002", "2008_000003"]
    assert ds.aspect_ratios()[1] == 0.5
    assert ds[1][1]["image_id"] == "2008_000002"
    assert ds.get_annotation(2).boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="VOC2010"):
        build_voc(tmp_path, ("2010_trainval",))
    with pytest.raises(ValueError, match="'<year>_<split>'"):
        build_voc(tmp_path, ("trainval",))
