"""Every config under configs/ loads, names its paper setting, and builds (without weights)."""
from pathlib import Path

import pytest

from detres.config import ClsConfig, DetConfig, load_config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    for n in ["demo_shapes", "voc07_vgg16", "voc07_r50", "voc07_r101", "voc0712_vgg16", "voc0712_r101",
              "voc12_r101", "coco_vgg16", "coco_r50", "coco_r101"]:
        assert n in names, n


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    assert path.read_text().lstrip().startswith("#"), f"{path.name}: first line should cite its setting"
    cfg = load_config(path)
    if path.stem.startswith("imagenet_"):
        assert isinstance(cfg, ClsConfig)
        from detres.tasks.classification import build_model as build_cls_model
        model = build_cls_model(cfg)
        head = model.fc if hasattr(model, "fc") else model.classifier[-1]
        assert head.out_features == cfg.model.num_classes == 1000
        if cfg.model.name.startswith("resnet"):  # the stride sits where the config's style says
            block = model.layer2[0]
            strided = block.conv1 if cfg.model.style == "msra" else block.conv2
            assert strided.stride == (2, 2), path.name
        return
    assert isinstance(cfg, DetConfig)
    from detres.tasks.detection import build_model, num_classes_for
    model = build_model(cfg, weights=None)
    assert model.roi_heads.box_predictor.cls_score.out_features == num_classes_for(cfg)
    if path.stem.startswith(("voc", "coco")):  # the paper's settings
        assert (cfg.data.min_size, cfg.data.max_size) == (600, 1000)
        assert cfg.model.rpn.aspect_ratios == [0.5, 1.0, 2.0]
        assert cfg.model.rpn.batch_size_per_image == 256 and cfg.model.roi.batch_size_per_image == 128
        assert cfg.model.rpn.post_nms_top_n_test == 300 and cfg.model.roi.nms_thresh == 0.3
        assert cfg.model.backbone.weights  # fine-tuned from ImageNet
        assert cfg.solver.steps and cfg.solver.steps[-1] < cfg.solver.max_iter


def test_paper_schedules():
    root = CONFIGS[0].parent
    voc = load_config(root / "voc07_r101.yaml")
    assert (voc.solver.base_lr, voc.solver.steps, voc.solver.max_iter, voc.solver.reference_batch) == \
        (0.001, [50000], 70000, 1)
    coco = load_config(root / "coco_r101.yaml")
    assert (coco.solver.base_lr, coco.solver.steps, coco.solver.max_iter, coco.solver.reference_batch) == \
        (0.003, [240000], 320000, 8)
    assert load_config(root / "voc0712_r101.yaml").data.train == ["2007_trainval", "2012_trainval"]
    assert load_config(root / "voc07_vgg16.yaml").solver.weight_decay == 0.0005
