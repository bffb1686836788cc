"""The C4 Faster R-CNN: torchvision's class, the paper's head wiring, normalisation from the weights."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FasterRCNN

from _engine_helpers import TINY_DETECTOR, make_spec
from detres.backbones import MSRA_META, build_classifier
from detres.modeling import C4RoIPooler, DetectorSpec, RPNSpec, build_detector
from detres.modeling.detector import C4FasterRCNN


def _batch():
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects at all
    ]
    return images, targets


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101", "vgg16"])
def test_detector_trains_and_predicts(backbone):
    # score_thresh 0: every class of every proposal is a candidate, so each image has detections of both classes
    spec = make_spec(backbone, tiny=True, backbone={"norm": "bn" if backbone != "vgg16" else "frozen_bn"},
                     pooler={"resolution": None if backbone == "vgg16" else 8}, roi={"score_thresh": 0.0})
    model = build_detector(spec, 3)
    assert type(model) is C4FasterRCNN and isinstance(model, FasterRCNN)  # torchvision's class, detres's forward
    pool = model.roi_heads.box_roi_pool
    assert isinstance(pool, C4RoIPooler) and pool.spatial_scale == 1 / 16
    model.train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, image in zip(out, images):
        assert set(det) == {"boxes", "labels", "scores"}
        boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
        n = len(labels)
        assert boxes.shape == (n, 4) and scores.shape == (n,)
        # both object classes (1, 2) and nothing else: 0 is the background and never returned
        assert sorted(set(labels.tolist())) == [1, 2]
        # at most one box per class per proposal, all inside the image (xyxy, clipped), best score first
        assert n <= 2 * TINY_DETECTOR["rpn"]["post_nms_top_n_test"]
        h, w = image.shape[-2:]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((scores > 0) & (scores < 1)).all() and torch.equal(scores, scores.sort(descending=True).values)


def test_paper_defaults():
    model = build_detector(make_spec("resnet18"), 21)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [9]
    assert model.roi_heads.box_roi_pool.output_size == 14
    assert model.roi_heads.nms_thresh == 0.3
    assert model.rpn._post_nms_top_n["testing"] == 300
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    vgg = build_detector(make_spec("vgg16", pooler={"type": "roi_pool"}), 21)
    assert vgg.roi_heads.box_roi_pool.output_size == 7 and vgg.roi_heads.box_roi_pool.kind == "roi_pool"
    with pytest.raises(ValueError, match=r"pooler.resolution: vgg16's head takes 7x7 RoI features \(its first fc layer\); 14"):
        make_spec("vgg16", pooler={"resolution": 14})
    with pytest.raises(ValueError, match="background"):
        build_detector(make_spec("resnet18"), 1)


def test_head_runs_conv5_on_pooled_roi_features():
    model = build_detector(make_spec("resnet18"), 3)
    head = model.roi_heads.box_head
    assert head.layer4[0].conv1.stride == (2, 2)  # conv5's first block has stride 2
    assert head(torch.rand(5, 256, 14, 14)).shape == (5, 512)
    assert not hasattr(model.backbone, "layer4")


def test_normalisation_follows_the_weights(tmp_path):
    state = build_classifier("resnet18", style="msra").state_dict()
    torch.save({"model": state, "meta": dict(MSRA_META)}, tmp_path / "msra.pth")
    model = build_detector(make_spec(backbone={"weights": tmp_path / "msra.pth"}), 3)
    assert model.weights_meta["style"] == "msra"
    img = torch.rand(3, 32, 32)
    got = model.transform.normalize(img)
    mean = torch.tensor(MSRA_META["mean"])[:, None, None]
    torch.testing.assert_close(got, img.flip(0) * 255.0 - mean)
    with pytest.raises(ValueError, match="'msra'-style"):
        build_detector(make_spec(backbone={"weights": tmp_path / "msra.pth", "style": "pytorch"}), 3)

    tv = build_detector(make_spec(), 3)
    expect = (img - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(tv.transform.normalize(img), expect)


def test_no_second_resize_by_default():
    model = build_detector(make_spec(tiny=True), 3).eval()
    images, _ = _batch()
    image_list, _ = model.transform(images)
    assert image_list.image_sizes == [(64, 80), (72, 64)]
    resizing = build_detector(make_spec(input={"min_size": 128, "max_size": 256}), 3).eval()
    assert resizing.transform(images)[0].image_sizes[0] == (128, 160)


def test_pooler_casts_rois_to_feature_dtype():
    pool = C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=7, sampling_ratio=0, aligned=False)
    # float32 proposals with float64 features: torchvision's kernels reject mixed dtypes, the pooler
    # casts (the same trap as fp16/bf16 features under AMP; CPU kernels have no bf16 RoIAlign).
    feats = {"res4": torch.rand(1, 8, 10, 10, dtype=torch.float64)}
    out = pool(feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])], [(160, 160)])
    assert out.dtype == torch.float64 and out.shape == (1, 8, 7, 7)
    pool = C4RoIPooler(kind="roi_pool", feature="res4", stride=16, output_size=7, sampling_ratio=0, aligned=False)
    assert pool(feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])]).shape == (1, 8, 7, 7)


def test_roi_pool_values_by_hand():
    """Fast R-CNN's RoI max pooling of the map F[y, x] = 10 y + x at stride 16: the RoI [0, 0, 64, 64] covers
    cells round(0 / 16) .. round(64 / 16) = 0..4 (5 cells); bin i spans cells floor(5 i / 7) .. ceil(5 (i + 1)
    / 7) - 1, and F grows with y and x, so bin (i, j) holds F at its last cell: rows/cols 0,1,2,2,3,4,4."""
    grid = torch.arange(10.0)
    feats = {"res4": (10 * grid[:, None] + grid[None, :])[None, None]}
    out = C4RoIPooler(kind="roi_pool", feature="res4", stride=16, output_size=7, sampling_ratio=0,
                      aligned=False)(
        feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])])[0, 0]
    last = [0, 1, 2, 2, 3, 4, 4]
    assert out.tolist() == [[10.0 * r + c for c in last] for r in last]
    align = C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=7, sampling_ratio=0,
                        aligned=False)(
        feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])])[0, 0]
    assert not torch.equal(align, out)  # RoIAlign interpolates: other values (negative control)


def test_weights_meta_builds_for_a_checkpoint_without_weights():
    model = build_detector(make_spec(), 3, weights_meta=dict(MSRA_META))
    assert model.weights_meta["style"] == "msra"  # the style is taken from the meta
    assert model.backbone.bn1.eps == 0.0 and model.transform.bgr
    with pytest.raises(ValueError, match="'msra'-style"):
        build_detector(make_spec(backbone={"style": "pytorch"}), 3, weights_meta=dict(MSRA_META))


def test_spec_defaults_are_the_configs_and_the_spec_checks_itself():
    from detres.config import ModelConfig

    spec = DetectorSpec()
    paper = ModelConfig()
    assert spec.rpn.anchor_sizes == (128, 256, 512) == tuple(paper.rpn.anchor_sizes)
    assert (spec.roi.nms_thresh, spec.rpn.post_nms_top_n_test, spec.backbone.name) == (0.3, 300, "resnet50")
    assert spec.pool_size == 14 and make_spec("vgg16").pool_size == 7
    with pytest.raises(AttributeError):
        spec.rpn.nms_thresh = 0.5  # frozen: a built detector's spec cannot drift
    for part, values, message in [
        ("backbone", {"norm": "layernorm"}, "backbone.norm: must be one of"),
        ("backbone", {"freeze_at": 6}, r"backbone.freeze_at: must be in \[0, 5\], got 6"),
        ("pooler", {"type": "roi_max"}, "pooler.type: must be one of"),
        ("rpn", {"nms_thresh": 0.0}, r"rpn.nms_thresh: must be in \(0, 1\], got 0.0"),
        ("rpn", {"anchor_sizes": []}, "rpn.anchor_sizes: must be a non-empty list"),
        ("rpn", {"bg_iou_thresh": 0.8}, r"rpn.bg_iou_thresh: must be in \[0, 0.7\], got 0.8"),
        ("roi", {"score_thresh": 1.0}, r"roi.score_thresh: must be in \[0, 1\), got 1.0"),
        ("input", {"max_size": 0}, r"input.max_size: must be in \[1, inf\], got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_spec(**{part: values})
    with pytest.raises(ValueError, match="rpn: must be a RPNSpec, got dict"):
        DetectorSpec(rpn={"nms_thresh": 0.5})
    with pytest.raises(ValueError, match="rpn.nms: not a field of RPNSpec"):
        DetectorSpec.from_dict({"rpn": {"nms": 0.5}})
    assert RPNSpec(anchor_sizes=[16, 32]).anchor_sizes == (16, 32)  # lists become tuples
    assert DetectorSpec.from_dict(make_spec("vgg16", tiny=True).to_dict()) == make_spec("vgg16", tiny=True)


def test_spec_from_the_config_is_the_one_translation(tmp_path):
    """Every field of every config section reaches the spec under its own name (no renames), and a value
    the spec refuses is reported with its config key."""
    from dataclasses import fields

    from detres.config import DetConfig
    from detres.tasks.detection import detector_spec

    cfg = DetConfig()
    cfg.model.rpn.min_size, cfg.model.roi.score_thresh, cfg.model.pooler.aligned = 16.0, 0.01, True
    cfg.data.max_size = 777
    spec = detector_spec(cfg)
    for name in ("backbone", "pooler", "rpn", "roi"):
        section, part = getattr(cfg.model, name), getattr(spec, name)
        for f in fields(section):
            want = getattr(section, f.name)
            assert getattr(part, f.name) == (tuple(want) if isinstance(want, list) else want), (name, f.name)
    assert (spec.rpn.min_size, spec.roi.score_thresh, spec.pooler.aligned) == (16.0, 0.01, True)
    assert spec.input == type(spec.input)(min_size=None, max_size=777)  # the data pipeline resizes
    cfg.model.backbone.norm = "layernorm"
    with pytest.raises(ValueError, match="config key 'model.backbone.norm': must be one of"):
        detector_spec(cfg)
