"""The compact data sets give the targets a plain per-annotation reading of the same files gives.

COCO: a seeded random file with every quirk the reader handles (crowd regions, zero/negative sizes, boxes
outside or crossing the border, malformed and non-finite boxes, images without annotations, category ids with
gaps, a class subset by name) is read by :class:`COCODetection` and, independently, by pycocotools plus a
per-annotation loop written here from the documented rules. VOC: every item against :func:`parse_voc_xml`
of its own file.
"""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from detres.data.coco import COCODetection
from detres.data.voc import VOC_CLASSES, VOCDetection, parse_voc_xml
from tests._data_helpers import write_voc_tree

CAT_IDS = (3, 7, 42, 90)


def _random_coco(tmp_path, seed=0, n_images=40, n_anns=400, nan=False):
    rng = np.random.default_rng(seed)
    images = [{"id": int(i), "file_name": f"sub/{i}.jpg", "width": int(rng.integers(30, 90)),
               "height": int(rng.integers(30, 90))} for i in rng.choice(10_000, n_images, replace=False)]
    anns = []
    for k in range(n_anns):
        im = images[int(rng.integers(0, n_images - 5))]  # the last five images never get an annotation
        x, y = rng.uniform(-10, im["width"]), rng.uniform(-10, im["height"])
        w, h = rng.uniform(-3, 40), rng.uniform(-3, 40)
        kind = rng.random()
        bbox = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
        if kind < 0.03:
            bbox = bbox[:3]  # malformed
        elif kind < 0.05:
            bbox = [x, y, "wide", h]
        elif kind < 0.07:
            bbox = [x, y, 0, h]
        elif nan and kind < 0.09:
            bbox = [float("nan"), y, w, h]
        anns.append({"id": k + 1, "image_id": im["id"], "category_id": int(rng.choice(CAT_IDS)), "bbox": bbox,
                     "iscrowd": int(rng.random() < 0.08), "area": 1.0, "segmentation": [[1, 2, 3, 4, 5, 6]]})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS]}
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for im in images:
        (tmp_path / "imgs" / im["file_name"]).touch()
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))  # json writes NaN as the (non-standard) literal NaN
    return tmp_path / "imgs", path, data


def _reference_targets(data, *, train, class_names=None):
    """image id -> (boxes, labels), read the slow, obvious way."""
    cats = sorted(c["id"] for c in data["categories"])
    if class_names is not None:
        by_name = {c["name"]: c["id"] for c in data["categories"]}
        cats = [by_name[n] for n in class_names]
    label = {c: i + 1 for i, c in enumerate(cats)}
    out = {}
    for im in data["images"]:
        boxes, labels = [], []
        for a in data["annotations"]:
            if a["image_id"] != im["id"] or a["iscrowd"] or a["category_id"] not in label:
                continue
            b = a["bbox"]
            if len(b) != 4 or not all(isinstance(v, (int, float)) for v in b) or not all(map(math.isfinite, b)):
                continue
            x, y, w, h = b
            if w <= 0 or h <= 0:
                continue
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, im["width"]), min(y + h, im["height"])
            if x2 <= x1 or y2 <= y1:
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(label[a["category_id"]])
        if boxes or not train:
            out[im["id"]] = (np.asarray(boxes, np.float32).reshape(-1, 4), labels)
    return out


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("class_names", [None, ["c90", "c7"]])
@pytest.mark.parametrize("nan", [False, True])
def test_coco_targets_equal_a_plain_reading(tmp_path, train, class_names, nan):
    image_dir, path, data = _random_coco(tmp_path, nan=nan)
    ds = COCODetection(image_dir, path, train=train, class_names=class_names)
    ref = _reference_targets(data, train=train, class_names=class_names)
    assert ds.ids == [i for i in (im["id"] for im in data["images"]) if i in ref]  # file order kept
    for i, image_id in enumerate(ds.ids):
        t = ds.get_target(i)
        assert t["image_id"] == image_id
        boxes, labels = ref[image_id]
        np.testing.assert_array_equal(t["boxes"].numpy(), boxes)
        assert t["labels"].tolist() == labels and t["labels"].dtype.is_floating_point is False
    sizes = {im["id"]: im["width"] / im["height"] for im in data["images"]}
    assert ds.aspect_ratios() == pytest.approx([sizes[i] for i in ds.ids])
    assert ds.file_name(0) == f"sub/{ds.ids[0]}.jpg"


def test_coco_pickles_as_arrays(tmp_path):
    """What a DataLoader worker receives: numpy arrays, no per-annotation Python objects."""
    image_dir, path, _ = _random_coco(tmp_path, n_images=200, n_anns=3000)
    ds = COCODetection(image_dir, path, train=True)
    back = pickle.loads(pickle.dumps(ds))
    assert [back.get_target(i)["boxes"].tolist() for i in range(len(back))] == \
        [ds.get_target(i)["boxes"].tolist() for i in range(len(ds))]
    objects = [v for v in vars(ds).values() if isinstance(v, (list, dict))]
    assert max(len(v) for v in objects) <= 200  # ids (one per image) at most; boxes live in arrays
    assert isinstance(ds._boxes, np.ndarray) and ds._boxes.shape[1] == 4


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["images"][1].__setitem__("id", "img_a"), r"images' id\[1\] is 'img_a', not an integer \(the file mixes int and str\)"),
    (lambda d: d["images"][0].__setitem__("id", 2 ** 70), r"images' id\[0\] is 1180591620717411303424, not an integer of at most 64 bits"),
    (lambda d: d["annotations"][0].__setitem__("image_id", "3"), r"annotations' image_id\[0\] is '3'"),
    (lambda d: d["images"][0].__setitem__("file_name", None), r"images\[0\] .* has no file_name"),
    (lambda d: d["images"][0].__setitem__("width", -5), r"images\[0\] .* has width -5"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), "category id 3 is listed twice"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 5), "has category_id 5, which is not in 'categories'"),
    (lambda d: d["annotations"][0].__setitem__("image_id", 1 if d["images"][0]["id"] != 1 else 2),
     "which is not in 'images'"),
    (lambda d: d.pop("categories"), "missing required field `categories`"),
])
def test_coco_bad_records_are_named(tmp_path, mutate, message):
    image_dir, path, data = _random_coco(tmp_path)
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as e:
        COCODetection(image_dir, path, train=True)
    assert str(path) in str(e.value)


def test_coco_file_encodings(tmp_path):
    image_dir, path, data = _random_coco(tmp_path)
    path.write_bytes(json.dumps(data).encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-16 text"):
        COCODetection(image_dir, path, train=True)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())  # a UTF-8 byte-order mark is accepted
    assert len(COCODetection(image_dir, path, train=True)) > 0
    path.write_text(json.dumps(data)[:-40])
    with pytest.raises(ValueError, match=r"not valid JSON .*line 1 column"):
        COCODetection(image_dir, path, train=True)


def test_coco_missing_image_suggests_image_root(tmp_path):
    image_dir, path, data = _random_coco(tmp_path)
    (image_dir / data["images"][2]["file_name"]).unlink()
    with pytest.raises(ValueError, match=r"image listed in .* does not exist.*data.image_root"):
        COCODetection(image_dir, path, train=False)


def test_unannotated_category_is_warned(tmp_path, caplog):
    image_dir, path, data = _random_coco(tmp_path)
    data["categories"].append({"id": 77, "name": "ghost"})
    path.write_text(json.dumps(data))
    ds = COCODetection(image_dir, path, train=True)
    assert "ghost" in ds.class_names
    assert "category 'ghost' has no annotation but is a class of the model" in caplog.text


def test_voc_items_equal_their_xml(tmp_path):
    rng = np.random.default_rng(1)
    images = {}
    for k in range(12):
        objs = [(VOC_CLASSES[int(rng.integers(20))], int(x), int(y), int(x) + int(rng.integers(1, 30)),
                 int(y) + int(rng.integers(1, 30)), [None, 0, 1][int(rng.integers(3))])
                for x, y in rng.integers(1, 30, (int(rng.integers(0, 4)), 2))]
        images[f"{k:06d}"] = {"size": (64, 48), "objects": objs}
    root = write_voc_tree(tmp_path / "voc", images, split="trainval")
    for keep in (False, True):
        ds = VOCDetection(root, split="trainval", keep_difficult=keep)
        for i, image_id in enumerate(ds.ids):
            ref = parse_voc_xml(root / "Annotations" / f"{image_id}.xml", VOC_CLASSES)
            ann = ds.get_annotation(i)
            np.testing.assert_array_equal(ann.boxes, ref.boxes)
            np.testing.assert_array_equal(ann.labels, ref.labels)
            np.testing.assert_array_equal(ann.difficult, ref.difficult)
            assert (ann.width, ann.height, ann.filename) == (64, 48, f"{image_id}.jpg")
            _, t = ds.load(i)
            sel = np.ones(len(ref.labels), bool) if keep else ~ref.difficult
            np.testing.assert_array_equal(t["boxes"].numpy(), ref.boxes[sel])
            assert t["labels"].tolist() == ref.labels[sel].tolist() and t["image_id"] == image_id


def test_a_coco_files_own_categories_decide_num_classes(tmp_path):
    """The issue's case: a 3-category COCO-format file with a COCO config gives a 4-class head, and a set
    num_classes that disagrees is refused before a model exists, naming the key and the file."""
    from detres.config import load_config
    from detres.tasks.detection import build_train_dataset, check_num_classes

    image_dir, path, data = _random_coco(tmp_path)
    data["categories"] = data["categories"][:3]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in CAT_IDS[:3]]
    path.write_text(json.dumps(data))
    cfg = load_config("configs/coco_r50.yaml", ["data.dataset=coco", f"data.train=[{path}]", f"data.test={path}",
                                                f"data.image_root={image_dir}"])
    assert check_num_classes(cfg, build_train_dataset(cfg)) == 4
    bad = load_config("configs/coco_r50.yaml", ["data.dataset=coco", f"data.train=[{path}]", f"data.test={path}",
                                                f"data.image_root={image_dir}", "model.num_classes=81"])
    with pytest.raises(ValueError, match=r"'model.num_classes': 81 does not match the data: .*ann.json has 3 classes"):
        check_num_classes(bad, build_train_dataset(bad))
