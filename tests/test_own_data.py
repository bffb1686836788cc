"""Users' own data by config alone: a VOC-layout folder of any name, and COCO JSON files given by path,
with the quirks of real labelling-tool exports; each trains 2 iterations and evaluates."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _engine_helpers import write_tiny_config
from detres.config import load_config
from detres.tasks.detection import build_train_dataset, run_train

COMMON = ["solver.max_iter=2", "solver.steps=[]", "test.eval_period=0", "test.num_vis_images=1",
          "solver.checkpoint_period=0", "model.roi.score_thresh=0.0"]


def _picture(h, w, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (5, 5), (w // 2, h // 2), (250, 30, 30), -1)
    return img


def _xml(filename, w, h, objects, path="C:\\Users\\someone\\labels\\" ):
    objs = "".join(
        f"<object><name>{n}</name>{'' if d is None else f'<difficult>{d}</difficult>'}<bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2, d in objects)
    return (f"<annotation><folder>export</folder><filename>{filename}</filename><path>{path}{filename}</path>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def _cvat_voc(root: Path) -> Path:
    """A VOC export of the kind CVAT and labelImg write: no VOC<year> folder, year-less split names, PNG and
    JPEG images, grayscale and CMYK JPEGs, <path> of another machine, float coordinates, no <difficult>,
    boxes touching and crossing the border, an upper-case file extension."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    specs = [  # id, file name, kind, objects
        ("img_a", "img_a.png", "rgb", [("car", 4.5, 6.2, 40.7, 30.1, None), ("person", 30, 20, 64, 48, 0)]),
        ("img_b", "img_b.jpg", "gray", [("person", 1, 1, 20, 40, None)]),
        ("img_c", "img_c.jpg", "cmyk", [("car", 10, 10, 70, 47, 0)]),  # crosses the right border (w = 64)
        ("img_d", "img_d.JPG", "rgb", [("car", 2, 3, 30, 30, 1), ("person", 20, 10, 50, 40, None)]),
    ]
    for i, (image_id, fname, kind, objects) in enumerate(specs):
        img = _picture(48, 64, i)
        if kind == "gray":
            Image.fromarray(img[:, :, 0], mode="L").save(root / "JPEGImages" / fname)
        elif kind == "cmyk":
            Image.fromarray(img).convert("CMYK").save(root / "JPEGImages" / fname, format="JPEG")
        else:
            Image.fromarray(img).save(root / "JPEGImages" / fname)
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(fname, 64, 48, objects))
    (root / "ImageSets" / "Main" / "train.txt").write_text("img_a\nimg_b\nimg_c\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("img_c\nimg_d\n")
    return root


def test_voc_format_own_data_trains_and_evaluates(tmp_path):
    root = _cvat_voc(tmp_path / "my_export")
    cfg = load_config(write_tiny_config(tmp_path), [
        "data.dataset=voc", f"data.root={root}", "data.classes=[car, person]", "data.train=[train]",
        "data.test=test", *COMMON])
    train = build_train_dataset(cfg)
    assert train.class_names == ("car", "person") and len(train) == 3
    image, target = train[1]  # the grayscale JPEG, as RGB
    assert image.shape[0] == 3 and target["labels"].tolist() == [2]
    result = run_train(cfg, progress=False)
    ev = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(ev["AP_11point"]) == {"car", "person"} and ev == result["eval"]
    assert (tmp_path / "out" / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    # a class name that differs only in case is an error naming the file, with the likely fix
    (root / "Annotations" / "img_a.xml").write_text(_xml("img_a.png", 64, 48, [("Car", 1, 1, 20, 20, 0)]))
    with pytest.raises(ValueError, match=r"img_a\.xml.*'Car'.*case-sensitive.*'car'"):
        build_train_dataset(cfg)


def _coco_export(root: Path) -> tuple[Path, Path]:
    """COCO JSON files as labelling tools export them: images beside the JSON, category ids with gaps, an
    extra category not trained on."""
    root.mkdir(parents=True)
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}, {"id": 9, "name": "tree"}]
    files = {}
    for split, n in (("train", 3), ("val", 2)):
        images, anns = [], []
        for i in range(n):
            name = f"{split}_{i}.jpg"
            Image.fromarray(_picture(48, 64, 10 + i)).save(root / name)
            images.append({"id": 100 + i, "file_name": name, "width": 64, "height": 48})
            anns += [{"id": 1000 + 10 * i, "image_id": 100 + i, "category_id": 3, "bbox": [5.0, 5.0, 27.0, 19.0],
                      "area": 513.0, "iscrowd": 0},
                     {"id": 1001 + 10 * i, "image_id": 100 + i, "category_id": 9, "bbox": [40, 20, 10, 20],
                      "area": 200, "iscrowd": 0},
                     {"id": 1002 + 10 * i, "image_id": 100 + i, "category_id": 7, "bbox": [30, 25, 30, 20],
                      "area": 600, "iscrowd": 0}]
        files[split] = root / f"{split}.json"
        files[split].write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return files["train"], files["val"]


def test_coco_format_own_data_trains_and_evaluates(tmp_path):
    train_json, val_json = _coco_export(tmp_path / "coco_export")
    cfg = load_config(write_tiny_config(tmp_path), [
        "data.dataset=coco", f"data.train=[{train_json}]", f"data.test={val_json}", "data.classes=[person, car]",
        *COMMON])
    train = build_train_dataset(cfg)
    assert train.class_names == ("person", "car")  # label i+1 = data.classes[i], matched by name
    assert train.label_to_cat_id == {1: 7, 2: 3}
    assert sorted(train.get_target(0)["labels"].tolist()) == [1, 2]  # "tree" is left out
    result = run_train(cfg, progress=False)
    assert set(result["eval"]["per_category"]) == {"person", "car"}  # scored on the trained classes only
    with pytest.raises(ValueError, match="not categories of this file"):
        build_train_dataset(load_config(write_tiny_config(tmp_path, "x.yaml"), [
            "data.dataset=coco", f"data.train=[{train_json}]", f"data.test={val_json}", "data.classes=[bus]"]))
