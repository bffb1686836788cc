"""COCO evaluator: perfect detections give AP 1; ids with gaps go there and back; results JSON."""
from __future__ import annotations

import json

import pytest
import torch

from detres.data.coco import COCODetection, load_coco
from detres.evaluation.coco import COCOEvaluator, evaluate_coco_results, load_coco_results
from tests._data_helpers import write_coco


def _perfect(ds):
    ev = COCOEvaluator(load_coco(ds.ann_file), label_to_cat_id=ds.label_to_cat_id)
    for i in range(len(ds)):
        t = ds.get_target(i)
        ev.process([t], [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}])
    return ev


def test_perfect_detections_give_ap_one_with_gapped_ids(tmp_path):
    image_dir, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90), degenerate=False)
    ds = COCODetection(image_dir, ann, train=False)
    ev = _perfect(ds)
    # the results carry the ORIGINAL category ids
    assert sorted(set(ev._local_arrays()["category_id"].tolist())) == [1, 5, 90]
    m = ev.evaluate()
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert m["AR100"] == pytest.approx(1.0)
    assert set(m) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert m["per_category"] == {"cat1": pytest.approx(1.0), "cat5": pytest.approx(1.0), "cat90": pytest.approx(1.0)}
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in m.items() if k != "per_category")


def test_wrong_category_mapping_is_not_perfect_and_results_file(tmp_path):
    image_dir, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90))
    ds = COCODetection(image_dir, ann, train=False)
    swapped = {1: 5, 2: 1, 3: 90}
    ev = COCOEvaluator(ann, label_to_cat_id=swapped, output_dir=tmp_path / "out")
    for i in range(len(ds)):
        t = ds.get_target(i)
        ev.process([t], [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}])
    m = ev.evaluate()
    assert m["AP"] < 0.5
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert results[0] == {"image_id": 1, "category_id": 5, "bbox": [10.0, 5.0, 30.0, 20.0], "score": 1.0}
    # evaluating the written file gives the same numbers
    coco = load_coco(ann)  # a pycocotools COCO, as tools/eval.py passes it
    again = evaluate_coco_results(coco, load_coco_results(tmp_path / "out" / "coco_instances_results.json", coco))
    assert again == m


def test_evaluator_accepts_a_dataset_and_bad_results(tmp_path):
    image_dir, ann, _ = write_coco(tmp_path)
    ds = COCODetection(image_dir, ann, train=False)
    ev = COCOEvaluator(ds)
    assert ev.label_to_cat_id == ds.label_to_cat_id
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    with pytest.raises(ValueError, match=r"r.json: entry 0: category_id 2"):
        load_coco_results(bad, ann)
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]))
    with pytest.raises(ValueError, match=r"entry 0: bbox"):
        load_coco_results(bad, ann)
    empty = COCOEvaluator(ds).evaluate()
    assert empty["AP"] == 0.0
