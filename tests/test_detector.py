"""The C4 Faster R-CNN: torchvision's class, the paper's head wiring, normalisation from the weights."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FasterRCNN

from _engine_helpers import TINY_DETECTOR
from detres.backbones import MSRA_META, build_classifier
from detres.modeling import C4RoIPooler, build_detector


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
    model = build_detector(backbone=backbone, num_classes=3, norm="bn" if backbone != "vgg16" else "frozen_bn",
                           pooler_resolution=None if backbone == "vgg16" else 8, box_score_thresh=0.0,
                           **TINY_DETECTOR)
    assert type(model) is FasterRCNN
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
        assert n <= 2 * TINY_DETECTOR["rpn_post_nms_top_n_test"]
        h, w = image.shape[-2:]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((scores > 0) & (scores < 1)).all() and torch.equal(scores, scores.sort(descending=True).values)


def test_paper_defaults():
    model = build_detector(backbone="resnet18", num_classes=21)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [9]
    assert model.roi_heads.box_roi_pool.output_size == 14
    assert model.roi_heads.nms_thresh == 0.3
    assert model.rpn._post_nms_top_n["testing"] == 300
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    vgg = build_detector(backbone="vgg16", num_classes=21, pooler="roi_pool")
    assert vgg.roi_heads.box_roi_pool.output_size == 7 and vgg.roi_heads.box_roi_pool.kind == "roi_pool"
    with pytest.raises(ValueError, match="7x7"):
        build_detector(backbone="vgg16", num_classes=21, pooler_resolution=14)
    with pytest.raises(ValueError, match="background"):
        build_detector(backbone="resnet18", num_classes=1)


def test_head_runs_conv5_on_pooled_roi_features():
    model = build_detector(backbone="resnet18", num_classes=3)
    head = model.roi_heads.box_head
    assert head.layer4[0].conv1.stride == (2, 2)  # conv5's first block has stride 2
    assert head(torch.rand(5, 256, 14, 14)).shape == (5, 512)
    assert not hasattr(model.backbone, "layer4")


def test_normalisation_follows_the_weights(tmp_path):
    state = build_classifier("resnet18", style="msra").state_dict()
    torch.save({"model": state, "meta": dict(MSRA_META)}, tmp_path / "msra.pth")
    model = build_detector(backbone="resnet18", num_classes=3, weights=tmp_path / "msra.pth")
    assert model.weights_meta["style"] == "msra"
    img = torch.rand(3, 32, 32)
    got = model.transform.normalize(img)
    mean = torch.tensor(MSRA_META["mean"])[:, None, None]
    torch.testing.assert_close(got, img.flip(0) * 255.0 - mean)
    with pytest.raises(ValueError, match="'msra'-style"):
        build_detector(backbone="resnet18", num_classes=3, weights=tmp_path / "msra.pth", style="pytorch")

    tv = build_detector(backbone="resnet18", num_classes=3)
    expect = (img - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(tv.transform.normalize(img), expect)


def test_no_second_resize_by_default():
    model = build_detector(backbone="resnet18", num_classes=3, **TINY_DETECTOR).eval()
    images, _ = _batch()
    image_list, _ = model.transform(images)
    assert image_list.image_sizes == [(64, 80), (72, 64)]
    resizing = build_detector(backbone="resnet18", num_classes=3, min_size=128, max_size=256).eval()
    assert resizing.transform(images)[0].image_sizes[0] == (128, 160)


def test_pooler_casts_rois_to_feature_dtype():
    pool = C4RoIPooler(kind="roi_align", feature="res4", stride=16, output_size=7)
    # float32 proposals with float64 features: torchvision's kernels reject mixed dtypes, the pooler
    # casts (the same trap as fp16/bf16 features under AMP; CPU kernels have no bf16 RoIAlign).
    feats = {"res4": torch.rand(1, 8, 10, 10, dtype=torch.float64)}
    out = pool(feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])], [(160, 160)])
    assert out.dtype == torch.float64 and out.shape == (1, 8, 7, 7)
    pool = C4RoIPooler(kind="roi_pool", feature="res4", stride=16, output_size=7)
    assert pool(feats, [torch.tensor([[0.0, 0.0, 64.0, 64.0]])]).shape == (1, 8, 7, 7)


def test_weights_meta_builds_for_a_checkpoint_without_weights():
    model = build_detector(backbone="resnet18", num_classes=3, weights_meta=dict(MSRA_META))
    assert model.weights_meta["style"] == "msra"  # the style is taken from the meta
    assert model.backbone.bn1.eps == 0.0 and model.transform.bgr
    with pytest.raises(ValueError, match="'msra'-style"):
        build_detector(backbone="resnet18", num_classes=3, weights_meta=dict(MSRA_META), style="pytorch")
