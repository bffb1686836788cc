"""faster-coco-eval (detres' COCO evaluator) against pycocotools' COCOeval, the oracle, on hand-made cases.

Each case also asserts a number known by hand, so that both libraries agreeing on a wrong or empty
evaluation would still fail. The 12 statistics must agree to 1e-9 (they agree to ~1e-16: faster-coco-eval
divides by ``tp + fp`` where pycocotools divides by ``tp + fp + 2.2e-16``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging

import numpy as np
import pytest

from detres.evaluation.coco import COCO_STAT_NAMES, evaluate_coco_results, load_coco_ground_truth
from detres.evaluation.synthetic import synthetic_coco_eval_inputs


def _pycocotools(gt: dict, results: list, *, cat_ids=None, img_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = sorted(cat_ids)
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_cat = {}
    for k, c in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        per_cat[names[c]] = float(p[p > -1].mean()) if (p > -1).any() else None
    return np.asarray(ev.stats, np.float64), per_cat


def _same_as_pycocotools(gt: dict, results: list, **kw) -> dict:
    """Evaluate with detres and pycocotools; assert equal stats and per-category AP; return detres' metrics."""
    ours = evaluate_coco_results(copy.deepcopy(gt), copy.deepcopy(results), **kw)
    stats, per_cat = _pycocotools(gt, results, **kw)
    for name, v in zip(COCO_STAT_NAMES, stats):
        if v < 0:
            assert ours[name] is None, name
        else:
            assert ours[name] is not None and abs(ours[name] - v) <= 1e-9, (name, ours[name], v)
    assert ours["per_category"].keys() == per_cat.keys()
    for name, v in per_cat.items():
        assert (ours["per_category"][name] is None) == (v is None), name
        if v is not None:
            assert abs(ours["per_category"][name] - v) <= 1e-9, (name, ours["per_category"][name], v)
    return ours


def _gt(images, anns, cats=(1,)):
    """images: [(id, w, h)]; anns: [(image_id, cat, [x, y, w, h], iscrowd)] numbered 1..N."""
    return {"images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in images],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": list(b), "area": b[2] * b[3],
                             "iscrowd": cr} for k, (i, c, b, cr) in enumerate(anns)],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


def _det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


def test_crowd_regions_ignore_the_detections_inside_them():
    # image 1: a person and a crowd region; detections: the person, and three boxes inside the crowd
    gt = _gt([(1, 200, 200)], [(1, 1, [10, 10, 40, 40], 0), (1, 1, [100, 100, 90, 90], 1)])
    dets = [_det(1, 1, [10, 10, 40, 40], 0.9), _det(1, 1, [110, 110, 30, 30], 0.95),
            _det(1, 1, [150, 120, 20, 60], 0.8), _det(1, 1, [101, 101, 88, 88], 0.5)]
    m = _same_as_pycocotools(gt, dets)
    assert m["AP"] == pytest.approx(1.0, abs=1e-12)  # the crowd detections are neither TP nor FP
    # the same boxes without the crowd flag: two false positives rank above the person
    gt["annotations"][1]["iscrowd"] = 0
    m = _same_as_pycocotools(gt, dets)
    assert m["AP50"] < 0.9


def test_empty_images_and_detections_on_images_without_ground_truth():
    gt = _gt([(1, 100, 100), (2, 100, 100), (3, 100, 100)], [(1, 1, [10, 10, 50, 50], 0)])
    perfect = [_det(1, 1, [10, 10, 50, 50], 0.9)]
    m = _same_as_pycocotools(gt, perfect)  # images 2 and 3: nothing at all
    assert m["AP"] == pytest.approx(1.0, abs=1e-12)
    # a higher-scored detection on the empty image 3 is a false positive ranked first: AP = 1/2 at every IoU
    # (precision 1/2 at recall 1), interpolated over the 101 recall points
    m = _same_as_pycocotools(gt, perfect + [_det(3, 1, [0, 0, 30, 30], 0.95)])
    assert m["AP"] == pytest.approx(0.5, abs=1e-12) and m["AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("tp_image", [1, 2])
def test_tied_scores_keep_pycocotools_order(tp_image):
    """Two detections with the same score, one right and one wrong, on different images: pycocotools ranks
    ties by image id (then results order), so the AP depends on which image holds the right one."""
    gt = _gt([(1, 100, 100), (2, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (2, 1, [10, 10, 50, 50], 0)])
    fp_image = 3 - tp_image
    # the wrong detection is listed first in the results in both variants
    dets = [_det(fp_image, 1, [60, 60, 30, 30], 0.5), _det(tp_image, 1, [10, 10, 50, 50], 0.5)]
    m = _same_as_pycocotools(gt, dets)
    # ranked TP first: precision 1 at recall 1/2 -> 51 of 101 recall points at 1.0; FP first: 0.5 there
    expected = 51 / 101 if tp_image == 1 else 51 / 101 * 0.5
    assert m["AP50"] == pytest.approx(expected, abs=1e-12)
    # ties inside one image keep the results order
    gt1 = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0)])
    a = [_det(1, 1, [10, 10, 50, 50], 0.5), _det(1, 1, [60, 60, 30, 30], 0.5)]
    assert _same_as_pycocotools(gt1, a)["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert _same_as_pycocotools(gt1, a[::-1])["AP50"] == pytest.approx(0.5, abs=1e-12)


def test_categories_without_detections_or_without_ground_truth():
    gt = _gt([(1, 100, 100), (2, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (2, 2, [20, 20, 40, 40], 0)],
             cats=(1, 2, 3))
    dets = [_det(1, 1, [10, 10, 50, 50], 0.9), _det(2, 3, [20, 20, 40, 40], 0.8)]  # none for 2; 3 has no GT
    m = _same_as_pycocotools(gt, dets)
    assert m["per_category"]["c1"] == pytest.approx(1.0, abs=1e-12)
    assert m["per_category"]["c2"] == 0.0
    assert m["per_category"]["c3"] is None  # no ground truth: left out of the mean
    assert m["AP"] == pytest.approx(0.5, abs=1e-12)
    # restricting the categories (a detector trained on some classes)
    m = _same_as_pycocotools(gt, dets, cat_ids=[1, 3])
    assert set(m["per_category"]) == {"c1", "c3"} and m["AP"] == pytest.approx(1.0, abs=1e-12)


def test_more_than_100_detections_on_an_image():
    gt = _gt([(1, 1000, 1000)], [(1, 1, [10 * k, 500, 8, 8], 0) for k in range(60)])
    # 120 wrong detections scored above the 60 right ones: only the first 100 count for AR100/AP
    wrong = [_det(1, 1, [900, 10 * k / 2, 5, 5], 0.9 - k * 1e-4) for k in range(120)]
    right = [_det(1, 1, [10 * k, 500, 8, 8], 0.5 - k * 1e-4) for k in range(60)]
    m = _same_as_pycocotools(gt, wrong + right)
    assert m["AR100"] == 0.0 and m["AP"] == 0.0
    right = [_det(1, 1, [10 * k, 500, 8, 8], 0.99 - k * 1e-4) for k in range(60)]
    m = _same_as_pycocotools(gt, wrong[:50] + right)  # 110 detections, the right ones scored first
    assert m["AR100"] == pytest.approx(1.0)
    assert m["AR10"] == pytest.approx(10 / 60) and m["AR1"] == pytest.approx(1 / 60)


def test_small_medium_and_large_areas():
    # one object per size range; no large object in category 2's image
    gt = _gt([(1, 640, 480)], [(1, 1, [0, 0, 20, 20], 0),        # small: 400 < 32^2
                               (1, 1, [100, 100, 50, 50], 0),    # medium: 2500
                               (1, 1, [200, 200, 200, 200], 0)])  # large: 40000
    dets = [_det(1, 1, [0, 0, 20, 20], 0.9), _det(1, 1, [100, 100, 50, 50], 0.8), _det(1, 1, [300, 10, 30, 30], 0.7)]
    m = _same_as_pycocotools(gt, dets)
    assert m["APs"] == pytest.approx(1.0, abs=1e-12) and m["APm"] == pytest.approx(1.0, abs=1e-12)
    assert m["APl"] == 0.0 and m["ARl"] == 0.0
    only_small = _gt([(1, 640, 480)], [(1, 1, [0, 0, 20, 20], 0)])
    m = _same_as_pycocotools(only_small, dets[:1])
    assert m["APs"] == pytest.approx(1.0, abs=1e-12) and m["APm"] is None and m["APl"] is None


def test_string_image_ids_and_an_image_subset():
    gt = _gt([("b", 100, 100), ("a", 100, 100), ("c", 100, 100)],
             [("a", 1, [10, 10, 50, 50], 0), ("b", 1, [10, 10, 50, 50], 0), ("c", 1, [0, 0, 10, 10], 0)])
    # tied scores across images: the order is the sorted string ids, as in pycocotools
    dets = [_det("b", 1, [60, 60, 30, 30], 0.5), _det("a", 1, [10, 10, 50, 50], 0.5), _det("c", 1, [0, 0, 10, 10], 0.4)]
    m = _same_as_pycocotools(gt, dets)
    assert 0.0 < m["AP"] < 1.0
    m = _same_as_pycocotools(gt, dets, img_ids=["a", "c"])
    assert m["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_synthetic_coco_like_result(seed):
    gt, results = synthetic_coco_eval_inputs(num_images=40, num_objects=300, num_categories=6, dets_per_image=30,
                                             seed=seed)
    m = _same_as_pycocotools(gt, results)
    assert 0.05 < m["AP"] < 0.9 and all(m[k] is not None for k in COCO_STAT_NAMES)
    # the generator is deterministic
    assert synthetic_coco_eval_inputs(num_images=40, num_objects=300, num_categories=6, dets_per_image=30,
                                      seed=seed) == (gt, results)


def test_compact_arrays_give_the_same_numbers_as_the_list():
    gt, results = synthetic_coco_eval_inputs(num_images=20, num_objects=120, num_categories=4, dets_per_image=20)
    arrays = {"image_id": np.array([r["image_id"] for r in results]),
              "category_id": np.array([r["category_id"] for r in results]),
              "bbox": np.array([r["bbox"] for r in results]), "score": np.array([r["score"] for r in results])}
    assert evaluate_coco_results(gt, arrays) == evaluate_coco_results(gt, results)


# --------------------------------------------------------------------------------------------------
# ground truth that pycocotools scores wrongly or chokes on: repaired or refused before evaluation


def _perfect(gt):
    return [_det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]
            if not a.get("iscrowd") and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4]


def _write(tmp_path, gt):
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(gt))
    return path


def test_repeated_annotation_ids_are_renumbered(tmp_path, caplog):
    gt = _gt([(1, 100, 100), (2, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [60, 60, 30, 30], 0),
                                               (2, 1, [10, 10, 20, 20], 0), (2, 1, [40, 40, 50, 50], 0)])
    for a in gt["annotations"]:
        a["id"] = 7  # every annotation has the same id
    stats, _ = _pycocotools(gt, _perfect(gt))
    assert stats[0] < 0.3  # what pycocotools makes of it: every box of an image read as the last one with id 7
    path = _write(tmp_path, gt)
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.coco"):
        m = evaluate_coco_results(path, _perfect(gt))
    assert m["AP"] == pytest.approx(1.0)
    assert f"{path}: annotation id 7 is used 4 times" in caplog.text


def test_annotation_id_zero_is_renumbered(tmp_path, caplog):
    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [60, 60, 30, 30], 0)])
    gt["annotations"][0]["id"] = 0
    stats, _ = _pycocotools(gt, _perfect(gt))
    assert stats[1] < 0.9  # pycocotools: the detection matched to id 0 counts as a false positive
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.coco"):
        m = evaluate_coco_results(_write(tmp_path, gt), _perfect(gt))
    assert m["AP50"] == pytest.approx(1.0) and "positive integers (found 0)" in caplog.text


@pytest.mark.parametrize("bbox", [[10, 10, 20], [10, 10, 20, float("nan")], None, [10, 10, "20", 20]])
def test_malformed_ground_truth_box_is_refused_naming_file_and_id(tmp_path, bbox):
    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [60, 60, 30, 30], 0)])
    gt["annotations"][1]["bbox"] = bbox
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(ValueError) as e:  # scored without it, the detection of the other box gave AP 1.0
        evaluate_coco_results(path, [_det(1, 1, [10, 10, 50, 50], 0.9)])
    assert str(e.value).startswith(f"{path}: annotation id 2: bbox must be 4 finite numbers")


def test_crowd_region_without_a_bbox_is_dropped_with_a_warning(tmp_path, caplog):
    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [60, 60, 30, 30], 1)])
    del gt["annotations"][1]["bbox"]
    path = _write(tmp_path, gt)
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.coco"):
        m = evaluate_coco_results(path, [_det(1, 1, [10, 10, 50, 50], 0.9)])
    assert m["AP"] == pytest.approx(1.0)
    assert f"{path}: 1 annotation(s) crowd region without a bbox (first: id 2)" in caplog.text


def test_mixed_int_and_str_image_ids_are_refused_in_one_line(tmp_path):
    gt = _gt([(1, 100, 100), ("img_a", 100, 100)], [(1, 1, [10, 10, 50, 50], 0)])
    path = _write(tmp_path, gt)
    with pytest.raises(ValueError, match=r"instances_val.json: image ids mix integers and strings \(e.g. 1 and "
                                         r"'img_a'\)") as info:
        evaluate_coco_results(path, [_det(1, 1, [10, 10, 50, 50], 0.9)])
    assert "\n" not in str(info.value)


def test_missing_area_is_computed_from_the_box(tmp_path, caplog):
    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [0, 0, 20, 20], 0)])
    for a in gt["annotations"]:
        del a["area"]
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.coco"):
        m = evaluate_coco_results(_write(tmp_path, gt), _perfect(gt))
    assert m["APs"] == pytest.approx(1.0) and m["APm"] == pytest.approx(1.0) and m["APl"] is None
    assert "2 annotation(s) area missing" in caplog.text


def test_the_users_coco_object_is_not_changed():
    from pycocotools.coco import COCO

    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [0, 0, 20, 20], 0)])
    gt["annotations"][0]["id"] = gt["annotations"][1]["id"] = 5
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    before = copy.deepcopy(coco.dataset)
    checked = load_coco_ground_truth(coco)
    assert coco.dataset == before and [a["id"] for a in checked.coco.dataset["annotations"]] == [1, 2]
    assert evaluate_coco_results(coco, _perfect(gt))["AP"] == pytest.approx(1.0)


def test_tools_eval_path_repairs_repeated_ids(tmp_path, caplog):
    """tools/eval.py --dataset coco: tasks reads the file with pycocotools, detres evaluates it."""
    from detres.tasks.detection import run_eval_results

    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0), (1, 1, [60, 60, 30, 30], 0)])
    gt["annotations"][1]["id"] = 1
    ann = _write(tmp_path, gt)
    (tmp_path / "dets.json").write_text(json.dumps(_perfect(gt)))
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.coco"):
        m = run_eval_results("coco", str(tmp_path / "dets.json"), ann_file=str(ann))
    assert m["AP"] == pytest.approx(1.0) and "annotation id 1 is used 2 times" in caplog.text


def test_negative_sides_follow_pycocotools(tmp_path, caplog):
    """A detection with one negative side has a negative area (w * h): COCOeval, in both libraries, reads it as
    outside every area range and ignores it; with two negative sides the area is positive and it is a false
    positive. The results check says so."""
    gt = _gt([(1, 100, 100)], [(1, 1, [10, 10, 50, 50], 0)])
    hit = _det(1, 1, [10, 10, 50, 50], 0.9)
    assert _same_as_pycocotools(gt, [_det(1, 1, [60, 60, -5, 10], 0.95), hit])["AP"] == pytest.approx(1.0)
    assert _same_as_pycocotools(gt, [_det(1, 1, [60, 60, -5, -10], 0.95), hit])["AP"] == pytest.approx(0.5)
    from detres.evaluation.coco import load_coco_results

    (tmp_path / "r.json").write_text(json.dumps([_det(1, 1, [60, 60, -5, 10], 0.95), hit,
                                                 _det(1, 1, [60, 60, -5, -10], 0.95)]))
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.coco"):
        load_coco_results(tmp_path / "r.json", _write(tmp_path, gt))
    assert "1 detection(s) with a negative width or height and 1 with both negative" in caplog.text


def test_every_kind_of_ground_truth_source_and_no_detections(tmp_path):
    from faster_coco_eval import COCO as FasterCOCO
    from pycocotools.coco import COCO

    gt = _gt([(1, 640, 480), (2, 640, 480)], [(1, 1, [10, 10, 50, 50], 0), (2, 2, [0, 0, 200, 200], 0)], cats=(1, 2))
    dets = [_det(1, 1, [12, 10, 50, 50], 0.9), _det(2, 2, [0, 0, 150, 200], 0.8)]
    want = _same_as_pycocotools(gt, dets)
    path = _write(tmp_path, gt)
    with contextlib.redirect_stdout(io.StringIO()):
        sources = [path, str(path), COCO(str(path)), FasterCOCO(str(path)), load_coco_ground_truth(path)]
    for source in sources:
        assert evaluate_coco_results(source, copy.deepcopy(dets)) == want, type(source)
    # no detections: 0 where there is ground truth, None (COCOeval's -1) where there is none
    m = evaluate_coco_results(path, [])
    assert m["AP"] == 0.0 and m["APm"] == 0.0 and m["APl"] == 0.0 and m["APs"] is None and m["ARs"] is None
    assert m["per_category"] == {"c1": 0.0, "c2": 0.0}
    with pytest.raises(ValueError, match=r"nope.json: annotation file not found"):
        evaluate_coco_results(tmp_path / "nope.json", dets)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        evaluate_coco_results(tmp_path / "bad.json", dets)
    with pytest.raises(ValueError, match=r"image_id 9 is not in the ground truth"):
        evaluate_coco_results(path, [_det(9, 1, [0, 0, 5, 5], 0.5)])
