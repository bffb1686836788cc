"""Centre-crop and 10-crop top-1/top-5 error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detres.data.imagenet import CENTER_VIEW
from detres.evaluation.classification import ClassificationEvaluator, evaluate_classifier, ten_crop


def test_ten_crop_views():
    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    views = ten_crop(images, 4)
    assert views.shape == (2, 10, 3, 4, 4)
    torch.testing.assert_close(views[:, 0], images[..., :4, :4])  # top-left
    torch.testing.assert_close(views[:, 3], images[..., 2:, 4:])  # bottom-right
    torch.testing.assert_close(views[:, CENTER_VIEW], images[..., 1:5, 2:6])  # centre
    # ... and each of the five mirrored (flip of top-left = top-right crop of the flipped image).
    for a, b in ((0, 6), (1, 5), (2, 8), (3, 7), (4, 9)):
        torch.testing.assert_close(views[:, b], views[:, a].flip(-1))


class _ConstantModel(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + self.w


def test_constant_model_centre_and_ten_crop_agree():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0, 0.5])  # ranking 1, 3, 2, 5, 0, 4
    labels = torch.tensor([1, 3, 4, 0, 2, 5])
    loader = [(torch.randn(3, 10, 3, 8, 8), labels[:3]), (torch.randn(3, 10, 3, 8, 8), labels[3:])]
    res = evaluate_classifier(_ConstantModel(logits), loader)
    assert res["num_images"] == 6
    assert res["top1_error_center"] == res["top1_error_10crop"] == pytest.approx(5 / 6)
    assert res["top5_error_center"] == res["top5_error_10crop"] == pytest.approx(1 / 6)  # only label 4 misses


class _ViewDependent(nn.Module):
    """Votes by brightness: class 0 for dark crops, class 1 for bright ones."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1) * 10


def test_ten_crop_averages_the_softmax_of_all_views():
    image = torch.zeros(1, 3, 12, 12)
    image[..., 2:10, 2:10] = 1.0  # bright centre, dark border: corners are darker than the centre
    image[..., :4, :4] = -5.0  # one very dark corner
    views = ten_crop(image, 8)
    logits = _ViewDependent()(views.flatten(0, 1)).view(1, 10, 2)
    expected = logits.softmax(-1).mean(1).argmax(-1)
    ev = ClassificationEvaluator(topk=(1,))
    ev.process(torch.tensor([1]), logits)
    res = ev.evaluate()
    assert res["top1_error_center"] == 0.0  # the centre crop alone says bright
    assert res["top1_error_10crop"] == float(expected.item() != 1)


def test_single_view_reports_centre_only_and_empty_is_an_error():
    ev = ClassificationEvaluator()
    ev.process(torch.tensor([0, 1]), torch.tensor([[2.0, 1.0], [2.0, 1.0]]))
    res = ev.evaluate()
    assert res["top1_error_center"] == 0.5 and "top1_error_10crop" not in res
    with pytest.raises(ValueError):
        ClassificationEvaluator().evaluate()
