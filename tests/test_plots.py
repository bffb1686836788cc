"""Pictures: PR curves per class, training curves, and readable detection drawings."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detres.evaluation.plots import plot_pr_curves, plot_training_curves
from detres.evaluation.visualize import PALETTE, draw_detections


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_pr_curves_one_panel_per_class(tmp_path, monkeypatch):
    # class a: TP, FP, TP over 2 objects (hand-computed): recall .5 .5 1, precision 1 .5 .667
    import matplotlib.axes

    drawn, titles = [], []
    real_plot, real_title = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, x, y, *a, **k: drawn.append((list(x), list(y))) or real_plot(ax, x, y, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, t, *a, **k: titles.append(t) or real_title(ax, t, *a, **k))
    curves = {"a": (np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), 0.8), "b": (np.array([]), np.array([]), None)}
    w, h = _png_size(plot_pr_curves(curves, tmp_path / "pr.png", title="t"))
    assert w > h  # two panels side by side
    # the one curve drawn is class a's, starting at recall 0 with its first precision; b's panel has none
    assert drawn == [([0.0, 0.5, 0.5, 1.0], [1.0, 1.0, 0.5, pytest.approx(2 / 3)])]
    assert "a: AP 80.0" in titles and "b" in titles
    with pytest.raises(ValueError):
        plot_pr_curves({}, tmp_path / "none.png")


def test_training_curves_from_metrics(tmp_path):
    rows = [{"iteration": i, "total_loss": 2.0 / i, "loss_classifier": 1.0 / i, "lr": 0.01} for i in range(1, 6)]
    rows += [{"iteration": 5, "eval/mAP_11point": 0.5, "eval/mAP_area": 0.55}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 6, "tot')
    _png_size(plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="nothing.jsonl"):
        plot_training_curves(tmp_path / "nothing.jsonl", tmp_path / "x.png")


def test_small_images_are_enlarged_and_boxes_follow(tmp_path):
    img = np.zeros((128, 128, 3), np.uint8)
    box = torch.tensor([[20.0, 60.0, 100.0, 120.0]])
    out = draw_detections(img, box, torch.tensor([1]), torch.tensor([0.9]), ["circle"], score_thresh=0.5, min_side=480)
    assert out.shape == (512, 512, 3)  # enlarged 4x (the smallest integer factor reaching 480)
    colour = tuple(int(PALETTE[1][i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(out[60 * 4 + 100, 20 * 4 + 1]) == colour  # the box's left edge, scaled with the picture
    assert tuple(out[60 * 4 - 5, 20 * 4 + 1]) == colour  # the label tag (its left margin) sits above the box
    assert tuple(out[300, 300]) == (0, 0, 0)  # inside the box: the image is not covered
    big = np.zeros((600, 800, 3), np.uint8)
    assert draw_detections(big, box, torch.tensor([1]), torch.tensor([0.9]), ["c"], score_thresh=0.5).shape == (600, 800, 3)


def test_empty_pr_panels_say_why():
    from detres.evaluation.plots import pr_panel_note

    assert pr_panel_note([], [], None) == "no ground truth"
    assert pr_panel_note([], [], 0.0) == "AP 0: no detection\nof this class"
    assert pr_panel_note([0.0, 0.0], [0.0, 0.0], 0.0) == "AP 0: no detection\nmatches an object"
    assert pr_panel_note([0.5, 1.0], [1.0, 1.0], 1.0) is None


def test_coco_gets_pr_curves(tmp_path):
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from detres.data.coco import load_coco
    from detres.evaluation.plots import coco_pr_curves
    from tests._data_helpers import write_coco

    _, ann, _ = write_coco(tmp_path, cat_ids=(1, 5, 90), degenerate=False)
    gt = load_coco(ann)
    # cat 1: its box found (AP 1); cat 5: a false positive outranks its true box (AP .5); cat 90: nothing found
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 5, 30, 20], "score": 0.9},
            {"image_id": 3, "category_id": 5, "bbox": [1, 1, 20, 20], "score": 0.8},
            {"image_id": 2, "category_id": 5, "bbox": [5, 10, 40, 50], "score": 0.7}]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    curves = coco_pr_curves(ev)
    assert list(curves) == ["cat1", "cat5", "cat90"]
    rec, prec, ap = curves["cat5"]
    assert rec.shape == (101,) and ap == pytest.approx(0.5) and np.allclose(prec, 0.5)
    assert curves["cat1"][2] == pytest.approx(1.0) and curves["cat90"][2] == 0.0
    assert _png_size(plot_pr_curves(curves, tmp_path / "coco_pr.png"))[0] > 0


def test_fig7_is_titled_and_every_line_visible_where_runs_coincide(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_rgb

    from detres.evaluation.degradation import FIG7_TITLE, _layer_response_figure, plot_layer_responses

    same = [(f"l{i}", 1.0 + 0.01 * (i % 3)) for i in range(19)]
    results = {"plain20": same, "plain56": [(f"l{i}", 13.0 - 0.2 * i) for i in range(55)], "resnet20": same,
               "resnet56": [(f"l{i}", 1.0) for i in range(55)]}
    fig, axes = _layer_response_figure(results)
    assert fig._suptitle.get_text() == FIG7_TITLE
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].astype(int)
    height = pixels.shape[0]
    for ax in axes:
        box = ax.get_window_extent()  # the plotting area only (the legend sits outside it)
        crop = pixels[height - int(box.y1) + 2:height - int(box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2]
        for line in ax.get_lines():
            rgb = np.array(to_rgb(line.get_color())) * 255
            seen = (np.abs(crop - rgb).max(axis=2) <= 8).sum()
            assert seen > 50, (line.get_label(), seen)  # plain20 under resnet20 (equal values) is still seen
    import matplotlib.pyplot as plt
    plt.close(fig)
    assert _png_size(plot_layer_responses(results, tmp_path / "fig7.png"))[0] > 0


def test_empty_pictures_get_a_caption_that_names_the_best_score():
    from detres.evaluation.visualize import empty_caption

    names = ["cup", "pen"]
    assert empty_caption(torch.tensor([1, 2]), torch.tensor([0.31, 0.9947]), names, 0.995) == \
        "no detection >= 0.995 (best: pen 0.994)"
    assert empty_caption(torch.zeros(0, dtype=torch.int64), torch.zeros(0), names, 0.5) == \
        "no detection >= 0.5 (the model returned none)"
    assert empty_caption(torch.tensor([1]), torch.tensor([0.5]), names, 0.5) is None


def test_trainer_pictures_are_named_by_the_image_file():
    from types import SimpleNamespace

    from detres.evaluation.visualize import _picture_name

    by_method = SimpleNamespace(file_name=lambda i: ["a.jpg", "sub/b.JPG", "../up/c.png"][i])
    assert [_picture_name(by_method, i, {"image_id": 100 + i}) for i in range(3)] == ["a", "sub/b", "up/c"]
    by_coco = SimpleNamespace(coco=SimpleNamespace(imgs={7: {"file_name": "x/y.jpg"}}))
    assert _picture_name(by_coco, 0, {"image_id": 7}) == "x/y"
    assert _picture_name(SimpleNamespace(), 0, {"image_id": "000005"}) == "000005"  # VOC: the id is the stem
