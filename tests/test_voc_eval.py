"""VOC evaluator: devkit rules checked on hand-computed cases, for BOTH AP kinds.

Boxes in the voc_eval cases are 1-based VOC pixels; "A" = [1, 1, 10, 10] (10x10 = 100 pixels
under the devkit's +1 convention).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from detres.evaluation.voc import (ClassDetections, GroundTruth, VOCEvaluator, evaluate_voc, evaluate_voc_results_dir,
                                   read_voc_results, voc_eval, write_voc_results)
from tests._data_helpers import write_results, write_voc_tree

A = [1, 1, 10, 10]
B = [20, 20, 30, 30]
FAR = [100, 100, 110, 110]


def test_11_point_thresholds_are_the_devkits_floats():
    """Recall reaches exactly 3/10, 6/10 and 7/10. The devkit's thresholds 0:0.1:1 are the floats
    0.30000000000000004, 0.6000000000000001 and 0.7000000000000001, so those recalls do NOT count for
    t = 0.3, 0.6, 0.7 (py-faster-rcnn's numpy.arange gives the same). 10 images, one box each;
    ranked detections: TP TP TP FP TP TP TP FP TP FP."""
    gt_image = np.arange(10)
    gt_boxes = np.tile(A, (10, 1)).astype(float)
    pattern = "TTTFTTTFTF"
    det_image, det_boxes, nxt = [], [], 0
    for c in pattern:
        if c == "T":
            det_image.append(nxt)
            det_boxes.append(A)
            nxt += 1
        else:
            det_image.append(9)
            det_boxes.append(FAR)
    scores = np.linspace(1.0, 0.1, len(pattern))
    r = voc_eval(np.array(det_image), scores, np.array(det_boxes, float), gt_image, gt_boxes, np.zeros(10, bool))
    # precision at each TP: 1, 1, 1 (rec .1-.3), 4/5, 5/6, 6/7 (rec .4-.6), 7/9 (rec .7); nothing above .7
    # t = 0, .1, .2 -> 1;  t = .30000000000000004 -> best over rec >= .4 = 6/7;  t = .4, .5 -> 6/7;
    # t = .6000000000000001 -> rec >= .7: 7/9;  t = .7000000000000001 and up -> nothing: 0
    devkit = (1 + 1 + 1 + 6 / 7 + 6 / 7 + 6 / 7 + 7 / 9) / 11
    exact_tenths = (1 + 1 + 1 + 1 + 6 / 7 + 6 / 7 + 6 / 7 + 7 / 9) / 11  # what thresholds of exactly k/10 give
    assert r["ap_11point"] == pytest.approx(devkit, abs=1e-15)
    assert abs(r["ap_11point"] - exact_tenths) > 0.05


def test_duplicates_are_false_positives():
    # ranked: d1 on A (TP), d2 on A again (duplicate -> FP), d3 on B (TP); npos = 2
    # rec = [.5, .5, 1], prec = [1, .5, 2/3]
    # 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1 (5 points) -> 2/3: (6 + 10/3) / 11 = 28/33
    # area: envelope [1, 2/3, 2/3]; 0.5 * 1 + 0.5 * 2/3 = 5/6
    r = voc_eval([0, 0, 0], [0.9, 0.8, 0.7], [A, A, B], [0, 0], [A, B], [False, False])
    assert r["tp"].tolist() == [1, 0, 1] and r["fp"].tolist() == [0, 1, 0]
    assert r["ap_11point"] == pytest.approx(28 / 33)
    assert r["ap_area"] == pytest.approx(5 / 6)


def test_detection_on_difficult_box_is_ignored():
    # gt: A (normal), D (difficult) -> npos = 1. Ranked: d1 on D (neither TP nor FP), d2 far (FP), d3 on A (TP)
    # cum tp = [0, 0, 1], fp = [0, 1, 1] -> rec = [0, 0, 1], prec = [-, 0, 1/2]
    # 11-point: every t has rec = 1 available with prec 1/2 -> 1/2; area: 1 * 1/2 = 1/2
    # (counting d1 as FP would give prec 1/3 at rec 1, i.e. AP 1/3)
    D = [50, 50, 60, 60]
    r = voc_eval([0, 0, 0], [0.9, 0.8, 0.7], [D, FAR, A], [0, 0], [A, D], [False, True])
    assert r["npos"] == 1
    assert r["tp"].tolist() == [0, 0, 1] and r["fp"].tolist() == [0, 1, 0]
    assert r["ap_11point"] == pytest.approx(0.5)
    assert r["ap_area"] == pytest.approx(0.5)


def test_iou_exactly_half_with_inclusive_pixels():
    # det [1, 1, 10, 5]: 10 x 5 = 50 pixels inside A (100 pixels): IoU = 50 / 100 = 0.5 -> TP, AP 1 (both kinds).
    # Without the +1 it would be 9*4 / (9*9) = 0.44 -> FP.
    r = voc_eval([0], [0.9], [[1, 1, 10, 5]], [0], [A], [False])
    assert r["tp"].tolist() == [1]
    assert r["ap_11point"] == pytest.approx(1.0) and r["ap_area"] == pytest.approx(1.0)
    # det [1, 1, 10, 4]: 40 / 100 = 0.4 -> FP, AP 0 (both kinds)
    r = voc_eval([0], [0.9], [[1, 1, 10, 4]], [0], [A], [False])
    assert r["fp"].tolist() == [1]
    assert r["ap_11point"] == 0.0 and r["ap_area"] == 0.0


def test_iou_half_through_the_evaluator_zero_based():
    # detres boxes are 0-based: gt [0, 0, 10, 10] is VOC A; det [0, 0, 10, 5] is VOC [1, 1, 10, 5] -> IoU 0.5 -> AP 1
    ev = VOCEvaluator(["thing"], gt_source={"img": {"boxes": [[0, 0, 10, 10]], "labels": [1], "difficult": [False]}})
    ev.process([{"image_id": "img"}], [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0]]), "labels": torch.tensor([1]),
                                        "scores": torch.tensor([0.3])}])
    m = ev.evaluate()
    assert m["AP_11point"]["thing"] == pytest.approx(1.0) and m["AP_area"]["thing"] == pytest.approx(1.0)


def test_tied_scores_keep_file_order():
    # both detections score 0.5; npos = 1.
    # order (FAR, A): fp then tp -> rec [0, 1], prec [0, 1/2] -> 11-point 1/2, area 1/2
    r = voc_eval([0, 0], [0.5, 0.5], [FAR, A], [0], [A], [False])
    assert r["ap_11point"] == pytest.approx(0.5) and r["ap_area"] == pytest.approx(0.5)
    # order (A, FAR): tp then fp -> rec [1, 1], prec [1, 1/2] -> 11-point 1, area 1
    r = voc_eval([0, 0], [0.5, 0.5], [A, FAR], [0], [A], [False])
    assert r["ap_11point"] == pytest.approx(1.0) and r["ap_area"] == pytest.approx(1.0)


def test_class_with_zero_detections_and_class_without_ground_truth(caplog):
    # "a": one gt, detected perfectly -> AP 1 / 1. "b": one gt, no detections -> AP 0 / 0.
    # "c": only a difficult gt -> null, left out of the mean -> mAP = (1 + 0) / 2 = 0.5 for both kinds.
    gt = {"x": GroundTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float),
                           np.array([1, 2, 3]), np.array([False, False, True]))}
    dets = {"a": ClassDetections(["x"], np.array([0.9]), np.array([A], float))}
    with caplog.at_level(logging.WARNING):
        m = evaluate_voc(dets, gt, ["a", "b", "c"])
    assert m["AP_11point"] == {"a": 1.0, "b": 0.0, "c": None}
    assert m["AP_area"] == {"a": 1.0, "b": 0.0, "c": None}
    assert m["mAP_11point"] == pytest.approx(0.5) and m["mAP_area"] == pytest.approx(0.5)
    assert "'c'" in caplog.text and "null" in caplog.text


def test_empty_results_file_gives_zero(tmp_path):
    root = write_voc_tree(tmp_path / "VOC2007", {"000001": {"objects": [("cat", 1, 1, 10, 10, 0)]}})
    write_results(tmp_path / "res", {"cat": [], "dog": []})
    from detres.data.voc import VOCDetection
    ds = VOCDetection(root, split="test", class_names=["cat", "dog"], keep_difficult=True)
    m = evaluate_voc_results_dir(tmp_path / "res", ds)
    # cat: gt but an empty file -> 0 (both kinds); dog: no gt -> null
    assert m["AP_11point"] == {"cat": 0.0, "dog": None}
    assert m["AP_area"] == {"cat": 0.0, "dog": None}
    assert m["mAP_11point"] == 0.0 and m["mAP_area"] == 0.0


def test_ids_with_leading_zeros_stay_strings(tmp_path):
    # image "0001" has a cat at A, image "1" a cat at [50, 50, 60, 60] (both VOC 1-based).
    # The two detections hit them -> AP 1 for both kinds. Were ids made ints, both would be image 1
    # and one detection would be a false positive.
    root = write_voc_tree(tmp_path / "VOC2007", {
        "0001": {"objects": [("cat", 1, 1, 10, 10, 0)]},
        "1": {"objects": [("cat", 50, 50, 60, 60, 0)]},
    })
    write_results(tmp_path / "res", {"cat": ["0001 0.9 1 1 10 10", "1 0.8 50 50 60 60"]})
    from detres.data.voc import VOCDetection
    ds = VOCDetection(root, split="test", class_names=["cat"], keep_difficult=True)
    assert ds.ids == ["0001", "1"]
    m = evaluate_voc_results_dir(tmp_path / "res", ds)
    assert m["AP_11point"]["cat"] == pytest.approx(1.0) and m["AP_area"]["cat"] == pytest.approx(1.0)


def test_best_match_taken_even_if_already_matched():
    # Devkit rule: a detection is assigned to its highest-overlap box, even if that box is already
    # matched (then it is a duplicate FP), not to the next best free box.
    # gt A and A2 = [1, 1, 10, 12] (IoU(A, A2) = 100 / 120). d1 = A (TP on A), d2 = A again: best is A
    # (IoU 1) -> FP although A2 would match at 0.83. npos = 2: rec [.5, .5], prec [1, .5]
    # 11-point: t = 0..0.5 -> 1 (6 points), rest 0 -> 6/11; area: 0.5 * 1 = 0.5
    A2 = [1, 1, 10, 12]
    r = voc_eval([0, 0], [0.9, 0.8], [A, A], [0, 0], [A, A2], [False, False])
    assert r["tp"].tolist() == [1, 0]
    assert r["ap_11point"] == pytest.approx(6 / 11) and r["ap_area"] == pytest.approx(0.5)


def _reference_voc_eval(det_image, det_scores, det_boxes, gt_image, gt_boxes, gt_diff):
    """A straightforward per-detection loop of the devkit (independent of the vectorised code)."""
    order = sorted(range(len(det_scores)), key=lambda k: -det_scores[k])
    used = [False] * len(gt_image)
    npos = sum(1 for d in gt_diff if not d)
    tp, fp = [], []
    for k in order:
        bb = det_boxes[k]
        ovmax, jmax = -np.inf, -1
        for j in range(len(gt_image)):
            if gt_image[j] != det_image[k]:
                continue
            g = gt_boxes[j]
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        t = f = 0
        if ovmax >= 0.5:
            if not gt_diff[jmax]:
                if not used[jmax]:
                    t, used[jmax] = 1, True
                else:
                    f = 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    # the devkit's thresholds: Octave's 0:0.1:1 is i * 0.1 (so the 4th is 0.30000000000000004, not 0.3)
    ap11 = sum((prec[rec >= t * 0.1].max() if (rec >= t * 0.1).any() else 0.0) for t in range(11)) / 11
    mrec, mpre = np.r_[0, rec, 1], np.r_[0, prec, 0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return ap11, float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    n_img, n_gt, n_det = 6, 15, 60
    gt_image = rng.integers(0, n_img, n_gt)
    xy = rng.integers(1, 40, (n_gt, 2))
    gt_boxes = np.c_[xy, xy + rng.integers(5, 20, (n_gt, 2))].astype(float)
    gt_diff = rng.random(n_gt) < 0.2
    src = rng.integers(0, n_gt, n_det)
    det_image = np.where(rng.random(n_det) < 0.8, gt_image[src], rng.integers(0, n_img, n_det))
    det_boxes = gt_boxes[src] + rng.normal(0, 2.5, (n_det, 4))
    det_scores = np.round(rng.random(n_det), 1)  # many ties
    r = voc_eval(det_image, det_scores, det_boxes, gt_image, gt_boxes, gt_diff)
    ap11, aparea = _reference_voc_eval(det_image, det_scores, det_boxes, gt_image, gt_boxes, gt_diff)
    assert r["ap_11point"] == pytest.approx(ap11, abs=1e-12)
    assert r["ap_area"] == pytest.approx(aparea, abs=1e-12)


def test_round_trip_through_results_files(tmp_path):
    from detres.data.shapes import SHAPES_CLASSES, generate_shapes_voc
    from detres.data.transforms import build_transforms
    from detres.data.voc import VOCDetection

    root = generate_shapes_voc(tmp_path / "shapes", num_train=0, num_test=25, image_size=64, max_objects=4,
                               seed=3, difficult_prob=0.2)
    ds = VOCDetection(root, split="test", class_names=SHAPES_CLASSES, keep_difficult=True,
                      transforms=build_transforms(train=False, min_size=96, max_size=160))
    ev = VOCEvaluator(SHAPES_CLASSES, gt_source=ds, output_dir=tmp_path / "res")
    g = torch.Generator().manual_seed(0)
    for i in range(len(ds)):
        _, target = ds[i]
        ann = ds.get_annotation(i)
        boxes = torch.from_numpy(ann.boxes)
        boxes = torch.cat([boxes + 4 * torch.randn(boxes.shape, generator=g), torch.rand(2, 4, generator=g) * 60])
        labels = torch.cat([torch.from_numpy(ann.labels), torch.randint(1, 4, (2,), generator=g)])
        scores = torch.rand(len(labels), generator=g).round(decimals=1)  # ties
        ev.process([target], [{"boxes": boxes, "labels": labels, "scores": scores}])
    in_memory = ev.evaluate()
    assert 0.0 < in_memory["mAP_area"] < 1.0
    plain = VOCDetection(root, split="test", class_names=SHAPES_CLASSES, keep_difficult=True)
    from_files = evaluate_voc_results_dir(tmp_path / "res", plain)
    assert from_files == in_memory


def test_write_read_results_exact(tmp_path):
    dets = {"cat": ClassDetections(["000005", "000007"], np.array([0.123456789, 0.5]),
                                   np.array([[1.25, 2.5, 30.0000001, 40.0], [5.0, 6.0, 7.0, 8.0]]))}
    write_voc_results(dets, tmp_path, class_names=["cat", "dog"])
    assert (tmp_path / "comp4_det_test_dog.txt").read_text() == ""
    back = read_voc_results(tmp_path, ["cat", "dog"])
    assert back["cat"].image_ids == ["000005", "000007"]
    np.testing.assert_array_equal(back["cat"].scores, dets["cat"].scores)
    np.testing.assert_array_equal(back["cat"].boxes, dets["cat"].boxes)
    assert len(back["dog"].scores) == 0


@pytest.mark.parametrize("content,needle", [
    ("000001 0.5 1 2 3\n", ":1: expected 6 fields"),
    ("000001 0.5 1 2 3 4\n000001 x 1 2 3 4\n", ":2: non-numeric"),
    ("000001 nan 1 2 3 4\n", ":1: non-finite"),
])
def test_bad_results_lines(tmp_path, content, needle):
    (tmp_path / "comp4_det_test_cat.txt").write_text(content)
    with pytest.raises(ValueError, match="comp4_det_test_cat.txt" + needle):
        read_voc_results(tmp_path, ["cat"])


def test_results_for_unknown_class_or_image(tmp_path):
    (tmp_path / "comp4_det_test_zebra.txt").write_text("")
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        read_voc_results(tmp_path, ["cat"])
    (tmp_path / "comp4_det_test_zebra.txt").unlink()
    (tmp_path / "comp4_det_test_cat.txt").write_text("000001 0.5 1 2 3 4\n\n000009 0.5 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_cat.txt:3: image id '000009'"):
        read_voc_results(tmp_path, ["cat"], valid_ids={"000001"})


def test_results_read_at_once_equal_the_line_by_line_reading(tmp_path):
    from pathlib import Path

    from detres.evaluation.voc import _parse_results_lines, _parse_results_lines_one_by_one

    rng = np.random.default_rng(0)
    fmts = [repr, lambda v: f"{v:.3f}", lambda v: f"{v:.6e}", lambda v: f"+{abs(v)!r}", lambda v: f"{v:.17g}"]
    lines = []
    for k in range(500):
        f = fmts[k % len(fmts)]
        nums = rng.normal(100, 80, 5)
        sep = "  " if k % 7 == 0 else " "
        lines.append(sep.join([f"{k:06d}"] + [f(float(v)) for v in nums]) + ("\t" if k % 11 == 0 else ""))
        if k % 50 == 0:
            lines.append("   ")
    text = "\n".join(lines) + "\n"
    ids, values = _parse_results_lines(Path("x.txt"), text, None)
    ids2, values2 = _parse_results_lines_one_by_one(Path("x.txt"), text.splitlines(), None)
    assert ids == ids2 and len(ids) == 500
    assert values.dtype == np.float64 and np.array_equal(values.view(np.int64), values2.view(np.int64))
    # a bad line far into a file (500 lines and 10 blank ones before it) is still named by its number
    (tmp_path / "comp4_det_test_cat.txt").write_text(text + "000001 0.5 1 2 3 4 5\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_cat.txt:511: expected 6 fields"):
        read_voc_results(tmp_path, ["cat"])


def _rank_evaluator(images):
    """An evaluator fed ``images``: id -> (gt box, detection box, label); ground truth from the targets."""
    ev = VOCEvaluator(["a", "b"])
    for image_id, (gt_box, det_box, label) in images.items():
        target = {"image_id": image_id, "boxes": torch.tensor([gt_box], dtype=torch.float32),
                  "labels": torch.tensor([label]), "difficult": torch.tensor([False])}
        ev.process([target], [{"boxes": torch.tensor([det_box], dtype=torch.float32), "labels": torch.tensor([label]),
                               "scores": torch.tensor([0.9])}])
    return ev


def test_distributed_evaluation_gathers_compact_arrays(monkeypatch):
    import detres.evaluation.voc as voc

    rank0 = {"000001": ([0, 0, 10, 10], [0, 0, 10, 10], 1), "000002": ([5, 5, 20, 20], [30, 30, 40, 40], 2)}
    rank1 = {"000003": ([0, 0, 10, 10], [0, 0, 10, 10], 2),
             "000001": ([0, 0, 10, 10], [50, 50, 60, 60], 1)}  # processed twice (a padded shard): the first copy counts
    ev0, ev1 = _rank_evaluator(rank0), _rank_evaluator(rank1)
    gathered = []

    def fake_gather(obj):
        gathered.append(obj)
        return [obj, ev1._local_arrays()]
    monkeypatch.setattr(voc, "all_gather_objects", fake_gather)
    m = ev0.evaluate()
    assert isinstance(gathered[0], dict) and all(isinstance(v, np.ndarray) for v in gathered[0].values())
    assert gathered[0]["ids"].tolist() == ["000001", "000002"] and gathered[0]["det_image"].tolist() == [0, 1]
    single = _rank_evaluator({**rank0, "000003": rank1["000003"]}).evaluate()
    assert m == single
    # b: the miss on 000002 ties with the hit on 000003 and is processed first: prec [0, 1/2] at rec [0, 1/2]
    assert m["AP_area"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.25)}
