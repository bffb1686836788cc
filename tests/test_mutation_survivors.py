"""Issue 25, item 5: the four one-line bugs that survived a mutation check, each killed here.

1. py-faster-rcnn's minimum proposal size not multiplied by the image's scale (``min_size * im_scale``);
2. pfr's pre-NMS top-n taken in anchor order instead of by score (the older fixture's logits were sorted);
3. ``<difficult>1.0</difficult>`` read as not difficult (VOC files write 0/1; other tools write floats);
4. detectron2's default pixel mean (used when a checkpoint carries none) in RGB order instead of BGR.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from _engine_helpers import make_spec
from detres.data.voc import parse_voc_xml
from detres.modeling import build_detector
from detres.modeling.rcnn import PaperRPN
from detres.modeling.tv_private import RPNHead


def _pfr_sides(boxes: torch.Tensor) -> torch.Tensor:
    """pfr's box sides (x2 - x1 + 1, y2 - y1 + 1), the smaller of the two per box."""
    return torch.minimum(boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1)


def test_pfr_min_size_is_multiplied_by_the_image_scale():
    """A pfr detector on a 64 x 96 input whose photo was 32 x 48 (scale 2): 12 px of the photo are 24 px of the
    input; without the scale 12 px would be kept. And at scale 0.5 (photo 128 x 192): 6 px."""
    torch.manual_seed(0)
    model = build_detector(make_spec(tiny=True, rpn={"anchor_style": "pfr", "min_size": 12,
                                                     "anchor_sizes": (8, 16, 32)}), 3).eval()
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 64, 96)])
        feats = model.backbone(images.tensors)
        seen = {}
        for name, orig in (("x2", (32, 48)), ("x0.5", (128, 192)), ("x1", None)):
            props = model.rpn(images, feats, original_image_sizes=[orig] if orig else None)[0][0]
            seen[name] = _pfr_sides(props)
    assert len(seen["x2"]) > 0 and float(seen["x2"].min()) >= 24.0
    assert float(seen["x1"].min()) < 24.0 and float(seen["x1"].min()) >= 12.0  # the control: 24 is not scale 1's
    assert float(seen["x0.5"].min()) < 12.0 and float(seen["x0.5"].min()) >= 6.0


def _rpn(pre_nms_top_n: int) -> PaperRPN:
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),))
    return PaperRPN(gen, RPNHead(4, 1), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=8,
                    positive_fraction=0.5, pre_nms_top_n=dict(training=pre_nms_top_n, testing=pre_nms_top_n),
                    post_nms_top_n=dict(training=10, testing=10), nms_thresh=0.7, min_size_original=0.0,
                    proposal_order="pfr", allowed_border=-1.0, smooth_l1_beta=1 / 9).eval()


def test_pfr_pre_nms_top_n_is_taken_by_score_not_anchor_order():
    """Three disjoint boxes whose logits are NOT sorted (1, 3, 2): the pre-NMS top-2 are boxes 1 and 2, best
    first; anchor order would keep boxes 0 and 1."""
    boxes = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [60.0, 0.0, 90.0, 30.0]]])
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    kept, scores = _rpn(2).filter_proposals(boxes, logits, [(100, 100)], [3])
    assert kept[0].tolist() == [[30.0, 30.0, 50.0, 50.0], [60.0, 0.0, 90.0, 30.0]]
    assert scores[0].tolist() == pytest.approx(torch.sigmoid(torch.tensor([3.0, 2.0])).tolist())
    kept, _ = _rpn(3).filter_proposals(boxes, logits, [(100, 100)], [3])  # all three, still best first
    assert kept[0][:, 0].tolist() == [30.0, 60.0, 0.0]


_XML = """<annotation><size><width>100</width><height>80</height><depth>3</depth></size>{objects}</annotation>"""
_OBJ = ("<object><name>dog</name>{difficult}<bndbox><xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>40</ymax>"
        "</bndbox></object>")


@pytest.mark.parametrize("text,expected", [("1", True), ("1.0", True), (" 1 ", True), ("0", False), ("0.0", False),
                                           ("", False), (None, False)])
def test_difficult_flag_accepts_floats_and_blanks(tmp_path, text, expected):
    tag = "" if text is None else f"<difficult>{text}</difficult>"
    path = tmp_path / "a.xml"
    path.write_text(_XML.format(objects=_OBJ.format(difficult=tag) * 2))
    ann = parse_voc_xml(path, ["cat", "dog"])
    assert ann.difficult.tolist() == [expected, expected] and ann.labels.tolist() == [2, 2]


def test_difficult_flag_refuses_words(tmp_path):
    path = tmp_path / "b.xml"
    path.write_text(_XML.format(objects=_OBJ.format(difficult="<difficult>maybe</difficult>")))
    with pytest.raises(ValueError, match=r"b.xml: object 1 has a non-numeric <difficult> 'maybe'"):
        parse_voc_xml(path, ["cat", "dog"])


def test_detectron2_default_pixel_mean_is_bgr(tmp_path):
    """A detectron2 checkpoint without ``pixel_mean``/``pixel_std`` gets detectron2's defaults, in its BGR
    order (103.530, 116.280, 123.675: B first, as DETECTRON2_PIXEL_MEAN in detres/backbones/convert.py)."""
    from test_convert import d2_r50_c4

    from detres.backbones.convert import convert_weights

    d2 = d2_r50_c4(np.random.default_rng(2), 3)
    given_mean = [100.0, 110.0, 120.0]
    d2["pixel_mean"] = np.array(given_mean, np.float32).reshape(3, 1, 1)
    with open(tmp_path / "given.pkl", "wb") as f:
        pickle.dump({"model": d2}, f)
    _, meta, _ = convert_weights(tmp_path / "given.pkl", tmp_path / "given.pth")
    assert meta["mean"] == pytest.approx(given_mean)  # the control: a carried mean is kept as is
    del d2["pixel_mean"], d2["pixel_std"]
    with open(tmp_path / "bare.pkl", "wb") as f:
        pickle.dump({"model": d2}, f)
    _, meta, _ = convert_weights(tmp_path / "bare.pkl", tmp_path / "bare.pth")
    assert meta["channel_order"] == "BGR"
    assert meta["mean"] == pytest.approx([103.530, 116.280, 123.675]) and meta["std"] == [1.0, 1.0, 1.0]
