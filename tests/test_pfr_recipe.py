"""Issue 19, items 2, 3 and 6: py-faster-rcnn's box-loss betas, anchors and proposal order, and the MSRA
Caffe stem pooling. Every expected value is computed by hand from the reference's algorithm (written out
beside it) and each option has a negative control: the old (torchvision) behaviour gives other values."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RPNHead

from _engine_helpers import make_spec
from detres.backbones import build_backbone, build_c4
from detres.backbones.convert import convert_weights
from detres.config import load_config
from detres.modeling import build_detector
from detres.modeling.rcnn import PaperRPN, PfrAnchorGenerator, fast_rcnn_losses, pfr_cell_anchors
from detres.tasks.detection import detector_spec

#: py-faster-rcnn lib/rpn/generate_anchors.py l.17-25: Shaoqing's MATLAB anchors (1-based pixels) for the
#: defaults (base 16, ratios 0.5/1/2, scales 8/16/32); the Python code gives them minus 1 (0-based, inclusive).
MATLAB_VOC_ANCHORS = [[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
                      [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
                      [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360]]


def _by_hand(ratio_wh: tuple[int, int], scale: int) -> list[float]:
    """generate_anchors' last step for one ratio's rounded (w, h) on the 16-px base box (centre 7.5):
    w*scale x h*scale around 7.5, inclusive pixels (x1, y1, x2, y2)."""
    w, h = ratio_wh[0] * scale, ratio_wh[1] * scale
    return [7.5 - (w - 1) / 2, 7.5 - (h - 1) / 2, 7.5 + (w - 1) / 2, 7.5 + (h - 1) / 2]


# the ratio enumeration by hand: area 256; r=0.5: w=round(sqrt(512))=round(22.63)=23, h=round(11.5)=12 (numpy
# rounds half to even); r=1: 16x16; r=2: w=round(sqrt(128))=round(11.31)=11, h=22
RATIO_WH = {0.5: (23, 12), 1.0: (16, 16), 2.0: (11, 22)}


def _pfr_inclusive(anchors: torch.Tensor) -> list[list[float]]:
    """detres's continuous boxes back to pfr's inclusive pixel boxes (x2 - 1, y2 - 1)."""
    return (anchors - torch.tensor([0.0, 0.0, 1.0, 1.0])).tolist()


# --------------------------------------------------------------------------------------------------
# Item 3: anchors
# --------------------------------------------------------------------------------------------------
def test_voc_base_anchors_are_generate_anchors():
    ours = pfr_cell_anchors([128, 256, 512], [0.5, 1.0, 2.0])
    expected = [[c - 1 for c in row] for row in MATLAB_VOC_ANCHORS]
    assert _pfr_inclusive(ours) == expected
    assert expected == [_by_hand(RATIO_WH[r], s) for r in (0.5, 1.0, 2.0) for s in (8, 16, 32)]
    # sizes measured as pfr (x2 - x1 + 1) = detres's x2 - x1: 184 x 96, 368 x 192, 736 x 384 for ratio 0.5
    wh = torch.stack([ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]], 1)[:3].tolist()
    assert wh == [[184, 96], [368, 192], [736, 384]]
    # negative control: torchvision's anchors are other boxes (182 x 90 around 0 for the first)
    tv = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)).cell_anchors[0]
    assert tv[0].tolist() == [-91.0, -45.0, 91.0, 45.0]
    assert not torch.equal(tv, ours)


def test_coco_base_anchors_are_generate_anchors():
    ours = pfr_cell_anchors([64, 128, 256, 512], [0.5, 1.0, 2.0])
    expected = [_by_hand(RATIO_WH[r], s) for r in (0.5, 1.0, 2.0) for s in (4, 8, 16, 32)]
    assert expected[:4] == [[-38, -16, 53, 31], [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199]]
    assert expected[4] == [-24, -24, 39, 39] and expected[8] == [-14, -36, 29, 51]
    assert _pfr_inclusive(ours) == expected and len(expected) == 12


def test_shifted_cell_and_generator_order():
    """proposal_layer.py l.86-103: shifts 16*i over the map, cells row-major, the cell's A anchors inside."""
    gen = PfrAnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    anchors = gen(images, [torch.zeros(1, 8, 4, 6)])[0]  # a 4 x 6 map at stride 16
    assert anchors.shape == (4 * 6 * 9, 4)
    row, col = 2, 3
    cell = anchors[(row * 6 + col) * 9:(row * 6 + col + 1) * 9]
    expected = [[x1 + 16 * col, y1 + 16 * row, x2 + 16 * col, y2 + 16 * row]
                for x1, y1, x2, y2 in ([c - 1 for c in r] for r in MATLAB_VOC_ANCHORS)]
    assert _pfr_inclusive(cell) == expected
    # centres at 16 i + 7.5 in pixel indices (pfr), i.e. (x1 + x2_inclusive) / 2
    centres = {((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in _pfr_inclusive(cell)}
    assert centres == {(16 * col + 7.5, 16 * row + 7.5)}
    tv = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))(images, [torch.zeros(1, 8, 4, 6)])[0]
    tv_cell = tv[(row * 6 + col) * 9:(row * 6 + col + 1) * 9]
    assert {((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in tv_cell.tolist()} == {(48.0, 32.0)}  # 16 i: other centres


def test_detector_takes_the_anchor_style_from_its_spec():
    pfr = build_detector(make_spec(tiny=True, rpn={"anchor_style": "pfr"}), 3)
    assert isinstance(pfr.rpn.anchor_generator, PfrAnchorGenerator) and pfr.rpn.proposal_order == "pfr"
    assert torch.equal(pfr.rpn.anchor_generator.cell_anchors[0], pfr_cell_anchors([16, 32, 64], [0.5, 1.0, 2.0]))
    default = build_detector(make_spec(tiny=True), 3)
    assert type(default.rpn.anchor_generator) is AnchorGenerator and default.rpn.proposal_order == "torchvision"
    with pytest.raises(ValueError, match="rpn.anchor_style"):
        make_spec(rpn={"anchor_style": "detectron"})


# --------------------------------------------------------------------------------------------------
# Item 3: the proposal order
# --------------------------------------------------------------------------------------------------
def _rpn(order: str, pre_nms_top_n: int) -> PaperRPN:
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),))
    return PaperRPN(gen, RPNHead(4, 1), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=8,
                    positive_fraction=0.5, pre_nms_top_n=dict(training=pre_nms_top_n, testing=pre_nms_top_n),
                    post_nms_top_n=dict(training=10, testing=10), nms_thresh=0.7, min_size_original=16.0,
                    proposal_order=order, allowed_border=-1.0, smooth_l1_beta=1 / 9).eval()


# A: small (10 px), the best score; C: 15.5 px wide (16.5 as pfr measures, x2 - x1 + 1); B: 40 px, the worst
BOXES = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 65.5, 80.0], [20.0, 10.0, 60.0, 50.0]]])
LOGITS = torch.tensor([[3.0, 2.0, 1.0]])


def test_pfr_drops_small_proposals_before_the_top_n():
    """pre-NMS top-1: torchvision keeps A (the best) and then drops it as too small: nothing is left; pfr
    drops A first (proposal_layer.py l.129 before l.135-137) and keeps C."""
    boxes, scores = _rpn("pfr", 1).filter_proposals(BOXES, LOGITS, [(100, 100)], [3])
    assert boxes[0].tolist() == [[50.0, 50.0, 65.5, 80.0]]
    assert scores[0].tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item()])
    boxes, _ = _rpn("torchvision", 1).filter_proposals(BOXES, LOGITS, [(100, 100)], [3])
    assert boxes[0].shape == (0, 4)


def test_pfr_measures_widths_plus_one():
    """All three in the top-n: pfr keeps C (16.5 >= 16, _filter_boxes l.173-175), torchvision drops it (15.5)."""
    boxes, _ = _rpn("pfr", 3).filter_proposals(BOXES, LOGITS, [(100, 100)], [3])
    assert boxes[0].tolist() == [[50.0, 50.0, 65.5, 80.0], [20.0, 10.0, 60.0, 50.0]]
    boxes, _ = _rpn("torchvision", 3).filter_proposals(BOXES, LOGITS, [(100, 100)], [3])
    assert boxes[0].tolist() == [[20.0, 10.0, 60.0, 50.0]]


def test_pfr_order_in_a_whole_detector_keeps_only_proposals_of_the_min_size():
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, rpn={"anchor_style": "pfr", "min_size": 16}), 3).eval()
    images = model.transform([torch.rand(3, 64, 96)])[0]
    feats = model.backbone(images.tensors)
    props, _ = model.rpn(images, feats)
    wh = torch.stack([props[0][:, 2] - props[0][:, 0] + 1, props[0][:, 3] - props[0][:, 1] + 1], 1)
    assert len(props[0]) > 0 and bool((wh >= 16).all())


# --------------------------------------------------------------------------------------------------
# Item 2: smooth L1 betas
# --------------------------------------------------------------------------------------------------
def _smooth_l1(d: float, beta: float) -> float:
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


def test_fast_rcnn_losses_beta():
    # 2 RoIs, 3 classes: RoI 0 of class 2 with deltas off by (0.5, 2, -0.2, 0); RoI 1 background
    logits = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    reg = torch.zeros(2, 12)
    targets = [torch.tensor([[-0.5, -2.0, 0.2, 0.0], [1.0, 1.0, 1.0, 1.0]])]
    labels = [torch.tensor([2, 0])]
    cls1, box1 = fast_rcnn_losses(logits, reg, labels, targets, beta=1.0)
    assert box1.item() == pytest.approx((0.125 + 1.5 + 0.02 + 0.0) / 2)  # divided by the 2 RoIs
    _, box9 = fast_rcnn_losses(logits, reg, labels, targets, beta=1 / 9)
    assert box9.item() == pytest.approx(sum(_smooth_l1(d, 1 / 9) for d in (0.5, 2.0, 0.2, 0.0)) / 2)
    assert box9.item() != pytest.approx(box1.item())
    # at torchvision's beta the loss is torchvision's, exactly
    cls_tv, box_tv = fastrcnn_loss(logits, reg, labels, targets)
    _, box_default = fast_rcnn_losses(logits, reg, labels, targets)
    assert torch.equal(box_default, box_tv) and torch.equal(cls1, cls_tv)


def test_rpn_loss_beta():
    rpn = _rpn("torchvision", 10)
    objectness = torch.tensor([[1.0], [-1.0]])
    deltas = torch.zeros(2, 4)
    labels = [torch.tensor([1.0, 0.0])]  # one positive, one negative: both sampled (8 per image)
    targets = [torch.tensor([[0.05, 1.5, 0.0, -0.3], [9.0, 9.0, 9.0, 9.0]])]
    rpn.smooth_l1_beta = 1.0
    _, box1 = rpn.compute_loss(objectness, deltas, labels, targets)
    assert box1.item() == pytest.approx((_smooth_l1(0.05, 1) + 1.0 + 0.0 + 0.045) / 2)  # / sampled anchors
    rpn.smooth_l1_beta = 1 / 9
    _, box9 = rpn.compute_loss(objectness, deltas, labels, targets)
    assert box9.item() == pytest.approx(sum(_smooth_l1(d, 1 / 9) for d in (0.05, 1.5, 0.0, -0.3)) / 2)
    assert box9.item() != pytest.approx(box1.item())


def test_detector_roi_beta_reaches_the_training_loss():
    """One training step of the RoI heads: the default equals torchvision's own RoIHeads.forward; beta 1
    changes loss_box_reg and not loss_classifier."""
    model = build_detector(make_spec(tiny=True, roi={"smooth_l1_beta": 1.0}, rpn={"smooth_l1_beta": 0.5}), 3)
    assert model.roi_heads.smooth_l1_beta == 1.0 and model.rpn.smooth_l1_beta == 0.5
    model.train()
    images, targets = model.transform([torch.rand(3, 64, 96)],
                                      [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([1])}])
    feats = model.backbone(images.tensors)
    props = [torch.tensor([[8.0, 8.0, 58.0, 52.0], [10.0, 6.0, 62.0, 48.0], [40.0, 30.0, 90.0, 60.0]])]
    heads = model.roi_heads

    def losses(beta):
        heads.smooth_l1_beta = beta
        torch.manual_seed(1)
        return heads(feats, [p.clone() for p in props], images.image_sizes, targets)[1]

    ours9, ours1 = losses(1 / 9), losses(1.0)
    torch.manual_seed(1)
    tv = RoIHeads.forward(heads, feats, [p.clone() for p in props], images.image_sizes, targets)[1]
    assert torch.equal(ours9["loss_box_reg"], tv["loss_box_reg"])
    assert torch.equal(ours9["loss_classifier"], tv["loss_classifier"])
    assert torch.equal(ours1["loss_classifier"], tv["loss_classifier"])
    assert ours1["loss_box_reg"].item() != pytest.approx(ours9["loss_box_reg"].item())


def test_paper_configs_set_the_pfr_recipe_and_defaults_are_torchvision():
    for path in ("configs/voc07_r101.yaml", "configs/voc07_vgg16.yaml", "configs/coco_r101.yaml"):
        spec = detector_spec(load_config(path))
        assert spec.roi.smooth_l1_beta == 1.0 and spec.rpn.smooth_l1_beta == pytest.approx(1 / 9), path
        assert spec.rpn.anchor_style == "pfr", path
        assert spec.backbone.caffe_stem_pool is (spec.backbone.name != "vgg16"), path  # VGG-16 refuses the ResNet stem
    spec = make_spec()
    assert spec.roi.smooth_l1_beta == spec.rpn.smooth_l1_beta == 1 / 9
    assert spec.rpn.anchor_style == "torchvision" and spec.backbone.caffe_stem_pool is False
    with pytest.raises(ValueError, match="model.roi.smooth_l1_beta"):
        load_config("configs/voc07_vgg16.yaml", ["model.roi.smooth_l1_beta=-1"])


# --------------------------------------------------------------------------------------------------
# Item 6: the MSRA Caffe stem pool
# --------------------------------------------------------------------------------------------------
def _caffe_sizes(h: int) -> dict[str, int]:
    """The MSRA Caffe ResNet's map sides (ResNet-101-deploy.prototxt): conv1 7x7/2 pad 3 (floor, Caffe's
    convolution); pool1 3x3/2 pad 0 with Caffe's ceil; res3a/res4a's stride-2 1x1 convs (floor)."""
    conv1 = (h + 2 * 3 - 7) // 2 + 1
    pool1 = math.ceil((conv1 - 3) / 2) + 1
    res3 = (pool1 - 1) // 2 + 1
    return {"stem": pool1, "res2": pool1, "res3": res3, "res4": (res3 - 1) // 2 + 1}


@pytest.fixture(scope="module")
def msra_r50(tmp_path_factory):
    """A converted MSRA ResNet-50 (synthetic Caffe2 blobs, tests/test_convert.py's generator)."""
    from test_convert import msra_r50_blobs
    blobs, _ = msra_r50_blobs(np.random.default_rng(0))
    d = tmp_path_factory.mktemp("msra_stem")
    with open(d / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    convert_weights(d / "R-50.pkl", d / "R-50.pth")
    return d / "R-50.pth"


@pytest.mark.parametrize("hw", [(65, 97), (64, 64), (81, 50), (33, 45)])
def test_caffe_stem_pool_map_sizes_on_a_converted_model(msra_r50, hw):
    h, w = hw
    net = build_backbone("resnet50", weights=msra_r50, style="msra", caffe_stem_pool=True,
                         out_features=("stem", "res2", "res3", "res4")).eval()
    assert net.weights_meta["style"] == "msra"
    with torch.no_grad():
        out = net(torch.rand(1, 3, h, w))
    for name, (ch, stride) in {"stem": (64, 4), "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16)}.items():
        assert tuple(out[name].shape[-2:]) == (_caffe_sizes(h)[name], _caffe_sizes(w)[name]), (name, hw)
        assert net.feature_specs[name].channels == out[name].shape[1] == ch
        assert net.feature_specs[name].stride == stride
    trunk, _ = build_c4("resnet50", weights=msra_r50, style="msra", caffe_stem_pool=True)
    with torch.no_grad():
        res4 = trunk.eval()(torch.rand(1, 3, h, w))["res4"]
    assert tuple(res4.shape[-2:]) == (_caffe_sizes(h)["res4"], _caffe_sizes(w)["res4"])
    assert trunk.feature_specs["res4"].stride == 16


def test_caffe_stem_pool_windows_and_negative_control():
    """Pool cell (i, j) is the max of conv1 rows 2i..2i+2 and columns 2j..2j+2 (no padding), the last one cut
    by the map's end (ceil); torchvision's padding-1 pool differs in size for odd conv1 sides and in grid."""
    net = build_backbone("resnet18", style="msra", caffe_stem_pool=True, out_features=("stem",), width=8).eval()
    x = torch.rand(1, 3, 65, 61)  # conv1: 33 x 31 (odd: the two pools differ in size)
    with torch.no_grad():
        c1 = net.relu(net.bn1(net.conv1(x)))
        stem = net(x)["stem"]
    assert c1.shape[-2:] == (33, 31) and stem.shape[-2:] == (16, 15)
    assert torch.equal(stem[..., 0, 0], c1[..., 0:3, 0:3].amax((-2, -1)))
    assert torch.equal(stem[..., 5, 7], c1[..., 10:13, 14:17].amax((-2, -1)))
    assert torch.equal(stem[..., 15, 14], c1[..., 30:33, 28:31].amax((-2, -1)))
    plain = build_backbone("resnet18", style="msra", out_features=("stem",), width=8).eval()
    assert plain.maxpool.padding == 1 and not plain.maxpool.ceil_mode
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert plain(x)["stem"].shape[-2:] == (17, 16)
    model = build_detector(make_spec(tiny=True, backbone={"caffe_stem_pool": True}), 3)
    assert model.backbone.maxpool.padding == 0 and model.backbone.maxpool.ceil_mode
    assert make_spec().backbone.caffe_stem_pool is False


def test_pfr_order_survives_torchscript_export(tmp_path):
    """The pfr selection's sizes depend on the image (how many proposals pass the size filter, here fewer
    than the pre-NMS top-n) and on its scale (16 px of the ORIGINAL image): exported at one size, the model
    gives eager's detections, at the photo's scale, at three other sizes and scales (one smaller than the
    tracing example: a top-k count frozen while tracing would ask for more candidates than there are)."""
    from detres.modeling.export import export_detector
    torch.manual_seed(0)
    model = build_detector(make_spec(rpn={"anchor_style": "pfr", "min_size": 16, "anchor_sizes": (16, 32, 64),
                                          "post_nms_top_n_test": 30, "pre_nms_top_n_test": 5000},
                                     roi={"score_thresh": 0.0}), 4).eval()
    path = export_detector(model, tmp_path / "m.torchscript", fmt="torchscript", example_size=(64, 96))
    traced = torch.jit.load(str(path))
    differs = 0
    for size, orig in [((96, 128), (60, 80)), ((120, 80), (300, 200)), ((48, 64), (96, 128))]:  # the last: smaller
        image = torch.rand(3, *size)
        with torch.no_grad():  # eager as evaluation runs it: with the photo's size
            ref = model([image], original_sizes=[orig])[0]
            unscaled = model([image])[0]
        boxes, labels, scores = traced(image, torch.tensor(orig))
        assert len(labels) == len(ref["labels"]) > 0 and torch.equal(labels, ref["labels"]), size
        assert (boxes - ref["boxes"]).abs().max() <= 1e-3 and (scores - ref["scores"]).abs().max() <= 1e-4
        differs += len(unscaled["labels"]) != len(labels) or not torch.equal(unscaled["scores"], scores)
    assert differs == 3  # negative control: at the input's scale (the old export) the detections differ


def test_fast_inference_copy_keeps_the_pfr_recipe():
    """tasks.detection evaluates the fast path's copy: it keeps pfr's anchors and order and the Caffe pool."""
    from _engine_helpers import same_detections
    from detres.modeling import prepare_for_inference
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, backbone={"caffe_stem_pool": True},
                                     rpn={"anchor_style": "pfr", "min_size": 16}, roi={"score_thresh": 0.0}), 3).eval()
    fast = prepare_for_inference(model)
    assert isinstance(fast.rpn.anchor_generator, PfrAnchorGenerator) and fast.rpn.proposal_order == "pfr"
    image = torch.rand(3, 80, 112)
    with torch.no_grad():
        ref = model([image])[0]
        assert len(ref["labels"]) > 0 and same_detections(ref, fast([image])[0])
