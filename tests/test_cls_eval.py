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


# ---------------------------------------------------------------- the fully-convolutional multi-scale test
class _MeanColour(nn.Module):
    """Logits = 10 x the image's mean colour: fc on globally pooled RGB (a net ending in avgpool + fc)."""

    def __init__(self):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[10.0, 0, 0], [0, 10.0, 0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _framed(tmp_path):
    """ImageNet val folder: class a (red) shows a red frame around a green centre, class b the reverse.
    The centre 32x32 crop of the 64x64 image sees only the centre colour; the whole image mostly the frame."""
    import numpy as np
    from PIL import Image

    for name, (frame, centre) in {"a_red": ((255, 0, 0), (0, 255, 0)), "b_green": ((0, 255, 0), (255, 0, 0))}.items():
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[:] = frame
        arr[16:48, 16:48] = centre
        d = tmp_path / "val" / name
        d.mkdir(parents=True)
        Image.fromarray(arr).save(d / "x.png")
    return tmp_path / "val"


def test_multi_scale_fully_convolutional_test_scores_the_whole_image(tmp_path):
    from detres.data.imagenet import ImageNetFolder, MultiScaleViews, list_collate
    from detres.data.loader import build_test_loader, stack_collate
    from detres.data.transforms import build_cls_test_transform
    from detres.evaluation.classification import evaluate_multi_scale

    val = _framed(tmp_path)
    model = _MeanColour()
    zero, one = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    ms = ImageNetFolder(val, transform=MultiScaleViews([48, 80], mean=zero, std=one))
    views, label = ms.get(1)
    assert [tuple(v.shape) for v in views] == [(3, 48, 48), (3, 80, 80)] and label == 1
    out = evaluate_multi_scale(model, build_test_loader(ms, batch_size=2, collate_fn=list_collate), amp=None,
                               flip=False)
    # the frame (3/4 of the pixels) decides: both right
    assert out == {"num_images": 2, "top1_error_multiscale": 0.0, "top5_error_multiscale": 0.0}
    assert evaluate_multi_scale(model, build_test_loader(ms, batch_size=1, collate_fn=list_collate),
                                amp=None, flip=True)["top1_error_multiscale"] == 0.0
    # negative control: the crop protocol (shorter side 64, centre 32) sees only the centre: both wrong
    crops = ImageNetFolder(val, transform=build_cls_test_transform(resize=64, crop=32, ten_crop=False, mean=zero,
                                                                   std=one))
    assert evaluate_classifier(model, build_test_loader(crops, batch_size=2, collate_fn=stack_collate)
                               )["top1_error_center"] == 1.0


def test_fully_conv_scores_average_to_the_global_pool_logits():
    from detres.backbones import build_classifier
    from detres.evaluation.classification import fully_conv_scores

    torch.manual_seed(0)
    net = build_classifier("resnet18", num_classes=5).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        maps = fully_conv_scores(net, x)
        assert maps.shape == (2, 5, 3, 4)  # stride 32
        torch.testing.assert_close(maps.mean(dim=(2, 3)), net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="avgpool"):
        fully_conv_scores(nn.Conv2d(3, 2, 1), x)
