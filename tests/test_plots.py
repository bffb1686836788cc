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


def test_pr_curves_one_panel_per_class(tmp_path):
    # class a: TP, FP, TP over 2 objects (hand-computed): recall .5 .5 1, precision 1 .5 .667
    curves = {"a": (np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), 0.8), "b": (np.array([]), np.array([]), None)}
    w, h = _png_size(plot_pr_curves(curves, tmp_path / "pr.png", title="t"))
    assert w > h  # two panels side by side
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
    out = draw_detections(img, box, torch.tensor([1]), torch.tensor([0.9]), ["circle"], min_side=480)
    assert out.shape == (512, 512, 3)  # enlarged 4x (the smallest integer factor reaching 480)
    colour = tuple(int(PALETTE[1][i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(out[60 * 4 + 100, 20 * 4 + 1]) == colour  # the box's left edge, scaled with the picture
    assert tuple(out[60 * 4 - 5, 20 * 4 + 1]) == colour  # the label tag (its left margin) sits above the box
    assert tuple(out[300, 300]) == (0, 0, 0)  # inside the box: the image is not covered
    big = np.zeros((600, 800, 3), np.uint8)
    assert draw_detections(big, box, torch.tensor([1]), torch.tensor([0.9]), ["c"]).shape == (600, 800, 3)
