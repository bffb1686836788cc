"""COCO evaluator: perfect detections give AP 1; ids with gaps go there and back; results JSON."""
from __future__ import annotations

import json

import numpy as np
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


class _CompactCOCO:
    """What the compact COCODetection offers the evaluator: no ``coco`` object, only the file and the maps."""

    def __init__(self, ann_file, label_to_cat_id, ids):
        self.ann_file, self.label_to_cat_id, self.ids = ann_file, label_to_cat_id, ids


def _outputs_for(ann, image_id, *, shift=0.0):
    data = json.loads(ann.read_text())
    cat_to_label = {c["id"]: k + 1 for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    boxes = torch.tensor([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                           a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "scores": torch.linspace(0.9, 0.5, len(anns))}


def _results_file(tmp_path, ann):
    data = json.loads(ann.read_text())
    path = tmp_path / "perfect.json"
    path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                 "score": 0.9} for a in data["annotations"] if not a["iscrowd"]]))
    return path


def test_evaluator_reads_the_annotation_file_itself_lazily(tmp_path):
    _, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90), degenerate=False)
    ds = _CompactCOCO(ann, {1: 1, 2: 5, 3: 90}, [1, 2, 3, 7])
    for source in (ds, type("Concat", (), {"datasets": [ds]})()):
        ev = COCOEvaluator(source)
        for i in ds.ids:
            ev.process([{"image_id": i}], [_outputs_for(ann, i)])
        assert ev._gt is None  # nothing read before evaluate()
        m = ev.evaluate()
        assert m["AP"] == pytest.approx(1.0) and m["per_category"] == {"cat1": pytest.approx(1.0),
                                                                        "cat5": pytest.approx(1.0),
                                                                        "cat90": pytest.approx(1.0)}
    other = tmp_path / "other.json"
    other.write_text(ann.read_text())
    two = type("Concat", (), {"datasets": [ds, _CompactCOCO(other, ds.label_to_cat_id, ds.ids)]})()
    with pytest.raises(ValueError, match="joins several COCO files"):
        COCOEvaluator(two)
    # a data set is also a ground truth for the plain functions
    res = load_coco_results(_results_file(tmp_path, ann), ds)
    assert evaluate_coco_results(ds, res)["AP"] == pytest.approx(1.0)
    ev = COCOEvaluator(ann, label_to_cat_id={1: 1, 2: 5, 3: 6})
    ev.process([{"image_id": 1}], [_outputs_for(ann, 1)])
    with pytest.raises(ValueError, match=r"instances_test.json\): \[6\]"):
        ev.evaluate()


def test_distributed_evaluation_gathers_compact_arrays(tmp_path, monkeypatch):
    import detres.evaluation.coco as coco

    _, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90), degenerate=False)
    l2c = {1: 1, 2: 5, 3: 90}
    rank0, rank1 = COCOEvaluator(ann, label_to_cat_id=l2c, output_dir=tmp_path / "out"), COCOEvaluator(
        ann, label_to_cat_id=l2c)
    rank0.process([{"image_id": 1}, {"image_id": 3}], [_outputs_for(ann, 1), _outputs_for(ann, 3)])
    rank1.process([{"image_id": 2}, {"image_id": 7}], [_outputs_for(ann, 2, shift=8.0), _outputs_for(ann, 7)])
    rank1.process([{"image_id": 1}], [_outputs_for(ann, 1, shift=30.0)])  # a second copy (padded shard): not counted
    gathered = []

    def fake_gather(obj):
        gathered.append(obj)
        return [obj, rank1._local_arrays()]
    monkeypatch.setattr(coco, "all_gather_objects", fake_gather)
    wire = []  # what each rank hands to broadcast_object; not distributed, rank 0's object comes back to it

    def rank0_broadcast(obj):
        wire.append(obj)
        return obj
    monkeypatch.setattr(coco, "broadcast_object", rank0_broadcast)
    m = rank0.evaluate()
    assert wire == [("ok", m)]  # rank 0 sends its metrics, exactly what it returns
    assert isinstance(gathered[0], dict) and all(isinstance(v, np.ndarray) for v in gathered[0].values())
    assert gathered[0]["images"].tolist() == [1, 3] and gathered[0]["bbox"].shape == (2, 4)
    assert gathered[0]["det_index"].tolist() == [0, 0]
    # the same numbers as one process seeing every image, and the results file holds all ranks' detections
    single = COCOEvaluator(ann, label_to_cat_id=l2c)
    for i, shift in ((1, 0.0), (3, 0.0), (2, 8.0), (7, 0.0)):
        single.process([{"image_id": i}], [_outputs_for(ann, i, shift=shift)])
    monkeypatch.setattr(coco, "all_gather_objects", lambda obj: [obj])
    assert single.evaluate() == m and 0.0 < m["AP"] < 1.0
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert [r["image_id"] for r in written] == [1, 1, 2]
    assert written[2] == {"image_id": 2, "category_id": 5, "bbox": [13.0, 10.0, 40.0, 50.0], "score": 0.9}
    # another rank evaluates nothing itself: it never reads the ground truth, sends nothing of its own and
    # returns what rank 0 sent (recorded above), not its own payload
    monkeypatch.setattr(coco, "is_main_process", lambda: False)
    sent_by_rank1 = []

    def rank1_broadcast(obj):
        sent_by_rank1.append(obj)
        return wire[-1]
    monkeypatch.setattr(coco, "broadcast_object", rank1_broadcast)
    assert rank1.evaluate() == m and rank1._gt is None
    assert sent_by_rank1 == [("ok", None)]
    # rank 0's evaluation error reaches the other rank as the same one-line ValueError instead of a hang
    bad0 = COCOEvaluator(ann, label_to_cat_id={1: 1, 2: 5, 3: 6})
    bad0.process([{"image_id": 1}], [_outputs_for(ann, 1)])
    monkeypatch.setattr(coco, "is_main_process", lambda: True)
    monkeypatch.setattr(coco, "broadcast_object", rank0_broadcast)
    monkeypatch.setattr(coco, "all_gather_objects", lambda obj: [obj])
    with pytest.raises(ValueError) as raised0:
        bad0.evaluate()
    assert wire[-1] == ("error", str(raised0.value)) and "[6]" in wire[-1][1]
    monkeypatch.setattr(coco, "is_main_process", lambda: False)
    monkeypatch.setattr(coco, "broadcast_object", rank1_broadcast)
    with pytest.raises(ValueError) as raised1:
        rank1.evaluate()
    assert str(raised1.value) == str(raised0.value)


def test_results_checked_in_bulk_still_name_the_bad_entry(tmp_path):
    _, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90))
    good = [{"image_id": 1 + k % 2, "category_id": (1, 5, 90)[k % 3], "bbox": [k % 50, 3.5, 10, 12], "score": 0.5}
            for k in range(300)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good))
    assert load_coco_results(path, ann) == good
    for bad, needle in (({"bbox": [1, 2, 3]}, "entry 300: bbox"), ({"bbox": [1, 2, "3", 4]}, "entry 300: bbox"),
                        ({"score": float("inf")}, "entry 300: score"), ({"image_id": 4}, "entry 300: image_id 4"),
                        ({"category_id": 1.5}, "entry 300: category_id 1.5"), ({"score": True}, "entry 300: score")):
        path.write_text(json.dumps(good + [{**good[0], **bad}]))
        with pytest.raises(ValueError, match=needle):
            load_coco_results(path, ann)
    # string image ids in the ground truth: an integer that reads like one of them is still refused
    data = json.loads(ann.read_text())
    for im in data["images"]:
        im["id"] = str(im["id"])
    for a in data["annotations"]:
        a["image_id"] = str(a["image_id"])
    (tmp_path / "str.json").write_text(json.dumps(data))
    path.write_text(json.dumps([{**g, "image_id": str(g["image_id"])} for g in good] + [good[0]]))
    with pytest.raises(ValueError, match="entry 300: image_id 1 is not"):
        load_coco_results(path, tmp_path / "str.json")


def test_coco_pr_curves_are_drawn_from_the_evaluation(tmp_path, monkeypatch):
    """COCO runs get pr_curves.png too: one panel per category, from faster-coco-eval's accumulated precision
    (perfect detections: precision 1 at every recall threshold up to 1)."""
    import detres.evaluation.coco as coco_mod

    image_dir, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90), degenerate=False)
    ds = COCODetection(image_dir, ann, train=False)
    drawn = {}
    real_plot = coco_mod.plot_pr_curves

    def spy(curves, path, **kw):
        drawn.update(curves)
        return real_plot(curves, path, **kw)

    monkeypatch.setattr(coco_mod, "plot_pr_curves", spy)
    ev = COCOEvaluator(ds, curves_path=tmp_path / "pr.png")
    for i in range(len(ds)):
        t = ds.get_target(i)
        ev.process([t], [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}])
    ev.evaluate()
    assert (tmp_path / "pr.png").stat().st_size > 0
    assert sorted(drawn) == ["cat1", "cat5", "cat90"]
    for recall, precision, ap in drawn.values():
        assert len(recall) == 101 and ap == pytest.approx(1.0)
        np.testing.assert_allclose(precision, 1.0)
