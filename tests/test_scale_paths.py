"""Issue 25, item 1: the detector owns its input's scale. For every paper config, on photos that the data
pipeline resizes (scale != 1), evaluation's ``predict_original``, ``detres.Predictor``, TorchScript and ONNX
(onnxruntime) give the same detections in the photo's pixels, and the fast path the same within its tolerance.

The paper configs drop RPN proposals under 16 px of the ORIGINAL image (py-faster-rcnn ``min_size *
im_scale``); before this item the exported files filtered at 16 px of the resized image. Random weights, with
trainable BN whose statistics are taken from one image (so activations stay O(1) and scores are not tied), the
RPN's anchors shrunk by biases (so proposals of every size exist and the threshold matters), few proposals and
96-px inputs (photos of 375x500: scale 0.256; 45x60: scale 2.13) keep it fast; ResNets at width 16 (the
scale code does not depend on the channels). Configs whose model sections are equal (VOC 07/12/07+12) are
one case. ``detres.Predictor`` runs for the ResNet configs (its code path does not depend on the network;
a VGG-16 checkpoint is 550 MB to write and read). Export (the slow part) runs for two configs, ``voc07_r101`` and
``coco_r50`` (VOC's and COCO's anchor sets; ONNX of VGG-16's 550 MB alone takes over 30 s here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _engine_helpers import same_detections
from detres.config import config_to_dict, load_config, save_config
from detres.data.transforms import build_transforms
from detres.evaluation.inference import predict_original
from detres.modeling.detector import boxes_to_original
from detres.modeling.export import ExportableDetector, export_detector
from detres.tasks.detection import build_model, inference_model
from detres.tasks.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem.startswith(("voc", "coco")))


def _model_section(name: str) -> dict:
    return config_to_dict(load_config(ROOT / "configs" / f"{name}.yaml"))["model"]


#: one config per distinct model section: the VOC 07 / 12 / 07+12 configs differ only in their data, so
#: their detectors (and this file's test of them) are the same; test_every_paper_config_is_covered checks it
_ORDER = sorted(PAPER_CONFIGS, key=lambda n: (len(n), n))  # voc07_* before voc12_* and voc0712_*
MODELS = [n for i, n in enumerate(_ORDER) if all(_model_section(n) != _model_section(m) for m in _ORDER[:i])]
EXPORTED = ("voc07_r101", "coco_r50")
PHOTOS = [(375, 500), (45, 60)]  # (H0, W0): reduced 0.256x and enlarged 2.13x to a shorter side of 96


def _cfg(name: str):
    over = ["model.backbone.weights=null", "model.backbone.norm=bn", "model.rpn.pre_nms_top_n_test=300",
            "model.rpn.post_nms_top_n_test=12", "model.roi.score_thresh=0.0", "model.roi.detections_per_img=20",
            "data.min_size=96", "data.max_size=160", "test.fast_inference=false"]
    if "vgg" not in name:
        over.append("model.backbone.width=16")
    return load_config(ROOT / "configs" / f"{name}.yaml", over)


@torch.no_grad()
def _random_model(cfg):
    """Random weights; BN statistics from one image (trunk) and its pooled RoIs (head), cumulative."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert cfg.model.rpn.min_size == 16 and model.rpn.min_size_original == 16  # the paper's recipe is on
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    image = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    model.backbone.train()
    feats = model.backbone(model.transform.normalize(image[0])[None])
    boxes = [torch.tensor([[0.0, 0.0, 100.0, 90.0], [30.0, 20.0, 150.0, 120.0], [5.0, 40.0, 60.0, 128.0]])]
    model.roi_heads.box_head.train()(model.roi_heads.box_roi_pool(feats, boxes, [(128, 160)]))
    model.eval()
    # proposals of all sizes, so that the minimum size decides some: each anchor's width and height deltas
    # get a bias from -3.5 to 0 (sides times 0.03 .. 1), and the smaller ones the higher objectness
    deltas = model.rpn.head.bbox_pred.bias.view(-1, 4)
    deltas[:, 2:] = torch.linspace(-3.5, 0.0, len(deltas))[:, None]
    model.rpn.head.cls_logits.bias.copy_(torch.linspace(1.0, 0.0, len(deltas)))  # the smallest score highest
    return model


def _photos():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in PHOTOS]


def _exact(a: dict, b: dict, upscale: float = 1.0, px: float = 1e-3) -> bool:
    """The same detections: count and labels equal, boxes within ``px`` pixels of the model's input
    (``upscale`` = photo / input size: 0.001 px of the input is 0.004 px of a photo reduced 0.256x), scores
    within 1e-4."""
    return (len(a["labels"]) == len(b["labels"]) > 0 and torch.equal(a["labels"], b["labels"])
            and float((a["boxes"] - b["boxes"]).abs().max()) <= px * max(upscale, 1.0)
            and float((a["scores"] - b["scores"]).abs().max()) <= 1e-4)


def _difference(a: dict, b: dict) -> str:
    if len(a["labels"]) != len(b["labels"]) or not torch.equal(a["labels"], b["labels"]):
        return f"labels {a['labels'].tolist()} vs {b['labels'].tolist()}"
    return (f"boxes up to {float((a['boxes'] - b['boxes']).abs().max()):.2g} px apart, scores up to "
            f"{float((a['scores'] - b['scores']).abs().max()):.2g}")


def _as_dict(outputs) -> dict:
    boxes, labels, scores = (torch.as_tensor(np.asarray(x)) for x in outputs)
    return {"boxes": boxes, "labels": labels, "scores": scores}


class _IgnoresOriginalSize(ExportableDetector):
    """The negative control: the export before item 1, and the client's mapping of its boxes to the photo
    (README): the model ran without the original size, so its RPN filtered at 16 px of the RESIZED image."""

    def forward(self, image, orig_size):
        out = self.model([image])[0]
        return boxes_to_original(out["boxes"], image.shape[-2:], orig_size), out["labels"], out["scores"]


def test_every_paper_config_is_covered():
    assert len(PAPER_CONFIGS) >= 10 and {"voc07_r101", "coco_vgg16", "voc0712_vgg16"} <= set(PAPER_CONFIGS)
    assert {n for n in MODELS} >= {"voc07_r101", "voc07_r50", "voc07_vgg16", "coco_r50", "coco_r101", "coco_vgg16"}
    for name in PAPER_CONFIGS:
        assert any(_model_section(name) == _model_section(m) for m in MODELS), name


@pytest.fixture(scope="module", params=MODELS)
def case(request, tmp_path_factory):
    """(config name, cfg, model, per photo: (input tensor, its target, predict_original's detections))."""
    cfg = _cfg(request.param)
    model = _random_model(cfg)
    tf = build_transforms(train=False, min_size=cfg.data.min_size, max_size=cfg.data.max_size)
    items = []
    for photo in _photos():
        tensor, target = tf(photo, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
        assert tensor.shape[1] != photo.shape[0]  # the scale is not 1
        items.append((photo, tensor, target, predict_original(model, [tensor], [target])[0]))
    return request.param, cfg, model, items, tmp_path_factory.mktemp(request.param)


def test_eval_predictor_and_fast_path_agree(case):
    name, cfg, model, items, tmp = case
    save_config(cfg, tmp / "config.yaml")
    predictor = None
    if "vgg" not in name:  # VGG-16's 550 MB checkpoint would take most of this file's time; same code path
        names = [f"class{i}" for i in range(1, model.roi_heads.box_predictor.cls_score.out_features)]
        torch.save({"model": model.state_dict(), "meta": model.weights_meta, "class_names": names},
                   tmp / "model_final.pth")
        predictor = Predictor(tmp)
    fast = inference_model(load_config(tmp / "config.yaml", ["test.fast_inference=true"]), model, "cpu")
    assert fast is not model
    control = _IgnoresOriginalSize(model)
    differs = 0
    for photo, tensor, target, ref in items:
        assert predictor is None or _exact(predictor(photo), ref), name
        assert same_detections(predict_original(fast, [tensor], [target])[0], ref), name
        with torch.no_grad():
            old = _as_dict(control(tensor, target["orig_size"]))
        differs += not _exact(old, ref)
    assert differs >= 1, f"{name}: the minimum size at the resized scale should change some detections"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_files_give_evaluations_detections(case, fmt):
    name, _, model, items, tmp = case
    if name not in EXPORTED:
        pytest.skip("export runs for one ResNet and one VGG-16 config (module docstring)")
    path = export_detector(model, tmp / f"m.{fmt}", fmt=fmt, example_size=(96, 128))
    if fmt == "torchscript":
        run = torch.jit.load(str(path))
    else:
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(image, orig):
            return session.run(None, {"image": image.numpy(), "orig_size": orig.numpy()})
    for _, tensor, target, ref in items:
        out = _as_dict(run(tensor, target["orig_size"]))
        upscale = float(target["orig_size"][0]) / tensor.shape[1]
        # onnxruntime's convolutions round otherwise than PyTorch's, and RoIPool's bins amplify it: 0.01 px
        assert _exact(out, ref, upscale, 1e-3 if fmt == "torchscript" else 2e-2), (name, fmt, _difference(out, ref))
