"""Export: TorchScript and ONNX (checked with onnxruntime) give eager's detections at two image sizes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from _engine_helpers import write_tiny_config
from detres.modeling import build_detector
from detres.modeling.export import export_detector

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(96, 128), (120, 80)]


def _model(pooler="roi_align"):
    torch.manual_seed(0)
    return build_detector(backbone="resnet18", num_classes=4, pooler=pooler, box_score_thresh=0.0,
                          anchor_sizes=(16, 32, 64), rpn_post_nms_top_n_test=30).eval()


def _run(fmt, path, image):
    if fmt == "torchscript":
        return torch.jit.load(str(path))(image)
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]


def _same(ref, boxes, labels, scores):
    return (len(labels) == len(ref["labels"]) and len(labels) > 0 and torch.equal(labels, ref["labels"])
            and (boxes - ref["boxes"]).abs().max() <= 0.5 and (scores - ref["scores"]).abs().max() <= 1e-3)


@pytest.mark.parametrize("pooler", ["roi_align", "roi_pool"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_eager(tmp_path, fmt, pooler):
    model = _model(pooler)
    path = export_detector(model, tmp_path / f"m.{fmt}", fmt=fmt, example_size=(64, 96))
    for size in SIZES:
        image = torch.rand(3, *size)
        with torch.no_grad():
            ref = model([image])[0]
        boxes, labels, scores = _run(fmt, path, image)
        assert labels.dtype == torch.int64 and boxes.shape == (len(labels), 4)
        assert _same(ref, boxes, labels, scores), (fmt, size)
    # the preprocessing is inside the export: a model built for other inputs (BGR, 0-255) gives other detections
    other = build_detector(backbone="resnet18", num_classes=4, pooler=pooler, box_score_thresh=0.0,
                           anchor_sizes=(16, 32, 64), rpn_post_nms_top_n_test=30,
                           weights_meta={"style": "pytorch", "channel_order": "BGR", "input_range": 255.0,
                                         "mean": [100.0, 110.0, 120.0], "std": [1.0, 1.0, 1.0], "bn_eps": 1e-5}).eval()
    other.load_state_dict(model.state_dict())
    image = torch.rand(3, *SIZES[0])
    with torch.no_grad():
        assert not _same(other([image])[0], *_run(fmt, path, image))


def test_unexportable_options_are_named(tmp_path):
    resizing = build_detector(backbone="resnet18", num_classes=4, min_size=64, max_size=128).eval()
    with pytest.raises(ValueError, match="min_size"):
        export_detector(resizing, tmp_path / "m.pt")
    aligned = build_detector(backbone="resnet18", num_classes=4, pooler_aligned=True).eval()
    with pytest.raises(ValueError, match="opset 11"):
        export_detector(aligned, tmp_path / "m.onnx", fmt="onnx", opset=11)
    with pytest.raises(ValueError, match="--format"):
        export_detector(_model(), tmp_path / "m.x", fmt="tflite")


def test_tool_exports_a_checkpoint(tmp_path, capsys):
    from detres.config import load_config
    from detres.tasks.detection import build_model

    cfg_path = write_tiny_config(tmp_path)
    model = build_model(load_config(cfg_path), weights=None)
    torch.save({"model": model.state_dict(), "meta": model.weights_meta}, tmp_path / "ck.pth")
    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(cfg_path), str(tmp_path / "ck.pth"), "--format", "torchscript", "--out",
                      str(tmp_path / "m.pt")]) == 0
    assert torch.jit.load(str(tmp_path / "m.pt"))(torch.rand(3, 64, 64))[0].shape[1] == 4
    capsys.readouterr()
    assert tool.main([str(cfg_path), str(tmp_path / "missing.pth"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "missing.pth" in capsys.readouterr().err
