"""Every config under configs/ loads, names its paper setting, and builds (without weights)."""
from pathlib import Path

import pytest

from detres.config import ClsConfig, DetConfig, load_config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    for n in ["demo_shapes", "voc07_vgg16", "voc07_r50", "voc07_r101", "voc0712_vgg16", "voc0712_r101",
              "voc12_vgg16", "voc12_r101", "coco_vgg16", "coco_r50", "coco_r101"]:
        assert n in names, n


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    assert path.read_text().lstrip().startswith("#"), f"{path.name}: first line should cite its setting"
    cfg = load_config(path)
    if path.stem.startswith(("imagenet_", "cifar10_")):
        assert isinstance(cfg, ClsConfig)
        from detres.tasks.classification import build_model as build_cls_model
        model = build_cls_model(cfg)
        head = model.fc if hasattr(model, "fc") else model.classifier[-1]
        assert head.out_features == cfg.model.num_classes == (1000 if path.stem.startswith("imagenet_") else 10)
        if cfg.model.name.startswith("resnet") and cfg.model.name not in ("resnet18", "resnet34"):
            # bottlenecks: the stride sits where the config's style says
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
    voc = load_config(root / "voc07_r101.yaml")  # py-faster-rcnn end to end: 70k, step 50k, iter_size 2
    assert (voc.solver.base_lr, voc.solver.steps, voc.solver.max_iter, voc.solver.iter_size,
            voc.solver.reference_batch) == (0.001, [50000], 70000, 2, 2)
    coco = load_config(root / "coco_r101.yaml")  # ResNet App. A: lr 0.001 for 240k, 0.0001 for 80k, 8 GPUs
    assert (coco.solver.base_lr, coco.solver.steps, coco.solver.max_iter, coco.solver.reference_batch) == \
        (0.001, [240000], 320000, 16)
    assert load_config(root / "voc0712_r101.yaml").data.train == ["2007_trainval", "2012_trainval"]
    assert load_config(root / "voc12_r101.yaml").data.train == ["2007_trainval", "2007_test", "2012_trainval"]
    for name in ("voc07_vgg16", "voc07_r101", "voc0712_r101", "voc12_vgg16", "coco_vgg16", "coco_r50", "coco_r101"):
        s = load_config(root / f"{name}.yaml").solver
        # pfr train.prototxt: lr_mult 2 on trainable biases, decay_mult 0 only on the frozen conv1_x/conv2_x
        assert (s.weight_decay, s.bias_lr_factor, s.weight_decay_bias) == (0.0005, 2.0, None), name
        assert s.batch_rule == "accumulate", name  # the paper's update on any number of processes
    voc_roi, coco_roi = load_config(root / "voc07_r101.yaml").model.roi, coco.model.roi
    assert (voc_roi.bg_iou_thresh_lo, coco_roi.bg_iou_thresh_lo) == (0.1, 0.0)


def test_paper_configs_decay_biases_as_the_weights():
    """The optimiser built from a paper config decays the bias group by 5e-4 as the weights (pfr prototxts:
    default decay_mult on trainable biases), with twice the rate; the old weight_decay_bias 0.0 fails here."""
    import torch
    from detres.tasks.common import build_solver

    cfg = load_config(CONFIGS[0].parent / "voc07_r101.yaml")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    opt, _ = build_solver(cfg, model)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == \
        [(0.001, 0.0005, 2), (0.002, 0.0005, 2)]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


#: What may differ between the two arms of a paper comparison: the network and its weights (with their
#: style) and where the run writes; the RoI size follows the backbone (pooler.resolution: null).
from detres.evaluation.compare import NETWORK_KEYS as ALLOWED_DIFFERENCES  # noqa: E402 (the one definition)
PAIRS = [("voc07_vgg16", "voc07_r50"), ("voc07_vgg16", "voc07_r101"), ("voc0712_vgg16", "voc0712_r101"),
         ("voc12_vgg16", "voc12_r101"), ("coco_vgg16", "coco_r50"), ("coco_vgg16", "coco_r101")]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_paper_pairs_differ_only_in_the_network(pair):
    from detres.config import config_to_dict
    root = CONFIGS[0].parent
    a, b = (_flat(config_to_dict(load_config(root / f"{n}.yaml"))) for n in pair)
    differing = {k for k in a if a[k] != b[k]}
    assert differing <= ALLOWED_DIFFERENCES, sorted(differing - ALLOWED_DIFFERENCES)
    assert a["model.pooler.type"] == "roi_pool" and a["model.pooler.resolution"] is None  # the paper's RoI pooling
    from detres.tasks.detection import build_model
    sizes = {n: build_model(load_config(root / f"{n}.yaml", ["model.backbone.weights=null"])).roi_heads.box_roi_pool.output_size
             for n in pair}
    assert sizes[pair[0]] == 7 and sizes[pair[1]] == 14  # VGG-16 pools 7x7 before fc6, ResNets 14x14 before conv5
