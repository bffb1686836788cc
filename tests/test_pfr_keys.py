"""The config keys that give py-faster-rcnn's behaviour: Caffe's momentum (solver.momentum_style) and COCO crowd
regions as ground truth (data.coco_crowd)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from detres.config import load_config
from detres.data.coco import COCODetection
from detres.engine.solver import CaffeSGD, build_sgd
from tests._data_helpers import write_coco


def _run(style, rates, *, wd=0.0, w0=1.0):
    """A scalar weight after one SGD step per rate in ``rates`` with the gradient 1 each time (momentum 0.9)."""
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(w0)
    opt = build_sgd(layer, lr=rates[0], momentum=0.9, weight_decay=wd, bias_lr_factor=1.0, weight_decay_bias=None,
                    momentum_style=style)
    for lr in rates:
        for g in opt.param_groups:
            g["lr"] = lr
        layer.weight.grad = torch.ones_like(layer.weight)
        opt.step()
    return float(layer.weight.detach()), opt


def test_caffe_momentum_keeps_the_rate_in_the_buffer():
    """Hand-computed, w0 = 1, g = 1, m = 0.9, rates 1, 1, then 0.1:
    pytorch: v = 1, 1.9, 2.71; w = 0, -1.9, -1.9 - 0.1 * 2.71 = -2.171.
    caffe:   v = 1, 1.9, 0.9 * 1.9 + 0.1 = 1.81; w = 0, -1.9, -3.71.
    Equal while the rate is constant, different after the step."""
    for style in ("pytorch", "caffe"):
        assert _run(style, [1.0])[0] == pytest.approx(0.0)
        assert _run(style, [1.0, 1.0])[0] == pytest.approx(-1.9)
    assert _run("pytorch", [1.0, 1.0, 0.1])[0] == pytest.approx(-2.171)
    assert _run("caffe", [1.0, 1.0, 0.1])[0] == pytest.approx(-3.71)
    # weight decay joins the gradient in both (Caffe's Regularize before ComputeUpdateValue): one step from w0 = 2
    # with wd 0.5: d = 1 + 0.5 * 2 = 2, w = 2 - 0.1 * 2 = 1.8
    for style in ("pytorch", "caffe"):
        assert _run(style, [0.1], wd=0.5, w0=2.0)[0] == pytest.approx(1.8)
    _, opt = _run("caffe", [1.0])
    assert type(opt) is CaffeSGD
    # each group's own rate (Caffe's lr_mult): biases at twice the rate step twice as far; no gradient, no step
    layer, frozen = nn.Linear(1, 1), nn.Linear(1, 1)
    w0, b0 = float(layer.weight.detach()), float(layer.bias.detach())
    opt = build_sgd(nn.ModuleList([layer, frozen]), lr=0.1, momentum=0.9, weight_decay=0.0, bias_lr_factor=2.0,
                    weight_decay_bias=None, momentum_style="caffe")
    layer.weight.grad, layer.bias.grad = torch.ones_like(layer.weight), torch.ones_like(layer.bias)
    before = [p.detach().clone() for p in frozen.parameters()]
    opt.step()
    assert float(layer.weight.detach()) == pytest.approx(w0 - 0.1)
    assert float(layer.bias.detach()) == pytest.approx(b0 - 0.2)
    assert all(torch.equal(p, q) for p, q in zip(frozen.parameters(), before))


def test_caffe_momentum_resumes_from_its_state_dict():
    """A CaffeSGD restored from its state dict continues exactly (its buffer holds rate x gradients)."""
    w, opt = _run("caffe", [1.0, 1.0])
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(w)
    again = build_sgd(layer, lr=1.0, momentum=0.9, weight_decay=0.0, bias_lr_factor=1.0, weight_decay_bias=None,
                      momentum_style="caffe")
    again.load_state_dict(opt.state_dict())
    for g in again.param_groups:
        g["lr"] = 0.1
    layer.weight.grad = torch.ones_like(layer.weight)
    again.step()
    assert float(layer.weight.detach()) == pytest.approx(-3.71)


def test_momentum_style_from_the_config(tmp_path):
    from detres.tasks.common import build_solver

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("model: {backbone: {name: resnet18}}\n")
    model = nn.Linear(2, 2)
    opt, _ = build_solver(load_config(cfg_path, ["solver.momentum_style=caffe"]), model)
    assert type(opt) is CaffeSGD
    opt, _ = build_solver(load_config(cfg_path), model)
    assert type(opt) is torch.optim.SGD
    with pytest.raises(ValueError, match="solver.momentum_style"):
        load_config(cfg_path, ["solver.momentum_style=Caffe"])
    with pytest.raises(ValueError, match="momentum_style"):
        build_sgd(model, lr=0.1, momentum=0.9, weight_decay=0.0, bias_lr_factor=1.0, weight_decay_bias=None,
                  momentum_style="nesterov")


def test_coco_crowd_as_ground_truth(tmp_path):
    """write_coco's image 2 has a box (label 2) and a crowd region (label 1, [0, 0, 20, 20]). ignore: one target;
    as_ground_truth: both, in file order, in training only; an image with only a crowd region is skipped for
    training either way (pfr's filter finds no foreground or background RoI in it)."""
    image_dir, ann, data = write_coco(tmp_path)
    data["annotations"].append({"id": 15, "image_id": 3, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100,
                                "iscrowd": 1})
    ann.write_text(json.dumps(data))
    ignore = COCODetection(image_dir, ann, train=True)
    crowd = COCODetection(image_dir, ann, train=True, crowd="as_ground_truth")
    assert ignore.ids == crowd.ids == [1, 2]
    assert ignore.get_target(1)["boxes"].tolist() == [[5, 10, 45, 60]]
    t = crowd.get_target(1)
    assert t["boxes"].tolist() == [[5, 10, 45, 60], [0, 0, 20, 20]] and t["labels"].tolist() == [2, 1]
    assert crowd.get_target(0)["boxes"].tolist() == ignore.get_target(0)["boxes"].tolist()  # no crowd: the same
    test = COCODetection(image_dir, ann, train=False, crowd="as_ground_truth")
    assert test.get_target(1)["boxes"].tolist() == [[5, 10, 45, 60]]  # evaluation: the evaluator's own rules
    with pytest.raises(ValueError, match="data.coco_crowd"):
        COCODetection(image_dir, ann, train=True, crowd="keep")


def test_coco_crowd_from_the_config(tmp_path):
    """data.coco_crowd reaches the training set built from a config (a COCO JSON given by path)."""
    from detres.tasks.detection import build_train_dataset

    image_dir, ann, _ = write_coco(tmp_path)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"data: {{dataset: coco, train: ['{ann}'], test: '{ann}', image_root: '{image_dir}'}}\n")
    for value, n in (("ignore", 1), ("as_ground_truth", 2)):
        ds = build_train_dataset(load_config(cfg_path, [f"data.coco_crowd={value}"]))
        assert len(ds.get_target(1)["boxes"]) == n, value
    with pytest.raises(ValueError, match="data.coco_crowd"):
        load_config(cfg_path, ["data.coco_crowd=yes"])
