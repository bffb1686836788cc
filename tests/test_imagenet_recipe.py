"""configs/imagenet_r{50,101,152}.yaml as the paper trains and tests (He et al. 2015, Sec. 3.4), and a net
pretrained with them dropping into the paper's detection configs on the same grid."""
from __future__ import annotations

import pytest
import torch

from detres.config import load_config
from test_train_cls import CLASSES, ROOT, make_imagenet, tiny_overrides

PAPER_CONFIGS = ("imagenet_r50.yaml", "imagenet_r101.yaml", "imagenet_r152.yaml")


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_the_imagenet_configs_are_the_papers_recipe(name):
    """Sec. 3.4: per-pixel mean, [256, 480] scale augmentation, 224 crops, batch 256 at lr 0.1 divided by 10 on
    plateaus, up to 60e4 iterations, wd 1e-4, momentum 0.9, 10-crop and the multi-scale fully-convolutional test
    at {224, 256, 384, 480, 640}; the MSRA models' stride placement and Caffe pool1."""
    from detres.tasks.classification import build_lr_hooks

    cfg = load_config(ROOT / "configs" / name)
    assert cfg.data.mean_image and cfg.data.mean_image_samples == 0
    assert (cfg.data.min_scale, cfg.data.max_scale, cfg.data.crop) == (256, 480, 224)
    s = cfg.solver
    assert (s.base_lr, s.reference_batch, s.gamma, s.max_iter) == (0.1, 256, 0.1, 600000)
    assert s.lr_schedule == "plateau" and s.steps == [] and s.warmup_iters == 0
    assert (s.weight_decay, s.momentum, s.momentum_style) == (0.0001, 0.9, "caffe")
    (hook,) = build_lr_hooks(cfg)
    assert hook.plateau is not None and not hook.warming
    assert cfg.test.ten_crop and cfg.test.multi_scale == [224, 256, 384, 480, 640]
    assert cfg.model.style == "msra" and cfg.model.caffe_stem_pool and cfg.model.shortcut == "B"


def _stem(net, x):
    with torch.no_grad():
        return net.stem(x)


def test_a_net_pretrained_here_runs_on_the_detection_grid(tmp_path):
    """Pretrain 2 iterations of imagenet_r50.yaml (style msra, its Caffe pool1, per-pixel mean, plateau rule) on
    tiny data, load it into voc07_r50's backbone: the stem gives the same grid and the same numbers. An input
    whose conv1 map is odd (70 px -> 35) tells the pools apart: Caffe's 17 cells, torchvision's 18."""
    from detres.tasks import classification as cls_task
    from detres.tasks import detection as det_task

    data = make_imagenet(tmp_path / "imagenet", per_class=2)
    over = [*tiny_overrides(data, tmp_path / "run", name="resnet50", style="msra", max_iter=2),
            "data.mean_image=true", "solver.lr_schedule=plateau", "test.ten_crop=false", "solver.base_lr=1e-5"]
    cfg = load_config(ROOT / "configs" / "imagenet_r50.yaml", over)
    assert cfg.model.caffe_stem_pool and cfg.solver.steps == []  # the config's own, not overridden
    cfg.solver.ims_per_batch = cfg.solver.reference_batch = 2
    cls_task.run_train(cfg, device="cpu", progress=False)
    ckpt = tmp_path / "run" / "model_final.pth"
    classifier = cls_task.build_model(cfg).eval()
    classifier.load_state_dict(torch.load(ckpt, weights_only=True)["model"])

    det_cfg = load_config(ROOT / "configs" / "voc07_r50.yaml", [f"model.backbone.weights={ckpt}",
                                                               f"model.num_classes={len(CLASSES) + 1}"])
    assert det_cfg.model.backbone.caffe_stem_pool
    trunk = det_task.build_model(det_cfg).backbone.eval()
    x = torch.rand(1, 3, 70, 70)
    here, there = _stem(classifier, x), _stem(trunk, x)
    assert here.shape == there.shape == (1, 64, 17, 17)
    torch.testing.assert_close(here, there, rtol=1e-5, atol=1e-4)  # same weights, same grid (frozen BN = BN in eval)
    # negative control: torchvision's padded pool1 (model.caffe_stem_pool=false) is another grid
    padded = cls_task.build_model(load_config(ROOT / "configs" / "imagenet_r50.yaml",
                                              [*over, "model.caffe_stem_pool=false"])).eval()
    assert _stem(padded, x).shape == (1, 64, 18, 18)
