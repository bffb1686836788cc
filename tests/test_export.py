"""Export: TorchScript and ONNX (checked with onnxruntime) give eager's detections at two image sizes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from _engine_helpers import make_spec, write_tiny_config
from detres.modeling import build_detector
from detres.modeling.export import FORMATS, export_detector

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(96, 128), (120, 80)]


def _model(pooler="roi_align"):
    torch.manual_seed(0)
    return build_detector(_spec(pooler), 4).eval()


def _spec(pooler):
    return make_spec(pooler={"type": pooler}, roi={"score_thresh": 0.0},
                     rpn={"anchor_sizes": (16, 32, 64), "post_nms_top_n_test": 30})


def _run(fmt, path, image, orig_size=None):
    """The exported file on ``image``; ``orig_size`` (H0, W0) defaults to the image's own size (TorchScript:
    left out, its default; ONNX: both inputs are required)."""
    if fmt == "torchscript":
        traced = torch.jit.load(str(path))
        return traced(image) if orig_size is None else traced(image, torch.tensor(orig_size))
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    orig = torch.tensor(orig_size if orig_size is not None else image.shape[-2:], dtype=torch.int64)
    return [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy(), "orig_size": orig.numpy()})]


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
    other = build_detector(_spec(pooler), 4,
                           weights_meta={"style": "pytorch", "channel_order": "BGR", "input_range": 255.0,
                                         "mean": [100.0, 110.0, 120.0], "std": [1.0, 1.0, 1.0], "bn_eps": 1e-5}).eval()
    other.load_state_dict(model.state_dict())
    image = torch.rand(3, *SIZES[0])
    with torch.no_grad():
        assert not _same(other([image])[0], *_run(fmt, path, image))


def test_unexportable_options_are_named(tmp_path):
    resizing = build_detector(make_spec(input={"min_size": 64, "max_size": 128}), 4).eval()
    with pytest.raises(ValueError, match="min_size"):
        export_detector(resizing, tmp_path / "m.pt")
    aligned = build_detector(make_spec(pooler={"aligned": True}), 4).eval()
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


def test_prepare_for_inference_is_where_the_readme_says():
    """``detres.modeling.prepare_for_inference`` returns an eval-mode copy with every BatchNorm folded away
    (FAST_DEFAULTS' fold_bn) and leaves the given model as it was."""
    from torchvision.ops import FrozenBatchNorm2d

    from detres.modeling import prepare_for_inference

    model = build_detector(make_spec(tiny=True, backbone={"norm": "bn"}), 3).train()
    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    n_bn = sum(isinstance(m, norms) for m in model.modules())
    fast = prepare_for_inference(model)
    assert fast is not model and not fast.training and model.training
    assert n_bn > 0 and sum(isinstance(m, norms) for m in model.modules()) == n_bn
    assert not any(isinstance(m, norms) for m in fast.modules())


def test_torchscript_outputs_need_no_grad_and_0_255_inputs_are_rescaled_with_a_warning(tmp_path):
    import warnings

    model = _model()
    path = export_detector(model, tmp_path / "m.pt", example_size=(64, 96))
    assert any(p.requires_grad for p in model.parameters())  # the caller's model is not changed
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    image = torch.rand(3, *SIZES[0])
    boxes, labels, scores = loaded(image)  # outside torch.no_grad()
    assert not boxes.requires_grad and not scores.requires_grad
    assert scores.numpy().shape == (len(labels),)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b255, l255, s255 = loaded(image * 255)
    assert any("taken as 0-255" in str(w.message) for w in caught)
    assert torch.equal(l255, labels) and (b255 - boxes).abs().max() <= 1e-3 and (s255 - scores).abs().max() <= 1e-4


def test_onnx_carries_the_contract_and_rescales_0_255(tmp_path):
    import onnxruntime as ort

    from detres.modeling.export import RESIZE_RULE, export_metadata, read_metadata

    model = _model()
    meta = export_metadata(model, class_names=["cup", "pen", "cap"], label_to_cat_id={1: 7, 2: 42, 3: 90},
                           min_size=600, max_size=1000)
    path = export_detector(model, tmp_path / "m.onnx", fmt="onnx", example_size=(64, 96), metadata=meta)
    props = read_metadata(path)
    assert json.loads(props["detres.class_names"]) == ["cup", "pen", "cap"]
    assert json.loads(props["detres.category_ids"]) == {"1": 7, "2": 42, "3": 90}
    assert props["detres.min_size"] == "600" and props["detres.max_size"] == "1000"
    assert props["detres.resize"] == RESIZE_RULE and "[0, 1]" in props["detres.input"]
    assert json.loads(props["detres.normalization"].split(" (")[0])["mean"] == model.weights_meta["mean"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "orig_size"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"]
    image = torch.rand(3, *SIZES[0])
    orig = torch.tensor(image.shape[-2:]).numpy()
    ref = session.run(None, {"image": image.numpy(), "orig_size": orig})
    big = session.run(None, {"image": (image * 255).numpy(), "orig_size": orig})
    assert len(ref[1]) > 0 and (ref[1] == big[1]).all() and abs(ref[0] - big[0]).max() <= 1e-2


def test_export_is_quiet_but_keeps_real_warnings(tmp_path):
    import warnings

    model = _model()
    for fmt in FORMATS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_detector(model, tmp_path / f"q.{fmt}", fmt=fmt, example_size=(64, 96))
        assert [str(w.message) for w in caught] == [], fmt
    model.backbone.register_forward_pre_hook(lambda m, x: warnings.warn("a real problem", UserWarning))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_detector(model, tmp_path / "r.pt", example_size=(64, 96))
    assert any("a real problem" in str(w.message) for w in caught)


def test_resize_rule_is_the_test_transform(tmp_path):
    """The README/metadata resize (round, cv2 INTER_LINEAR on uint8, / 255) is what detres feeds."""
    import cv2
    import numpy as np

    from detres.data.transforms import build_transforms

    rng = np.random.default_rng(0)
    for h0, w0, lo, hi in [(375, 500, 600, 1000), (333, 1000, 600, 1000), (77, 131, 64, 100)]:
        img = rng.integers(0, 256, (h0, w0, 3), dtype=np.uint8)
        tensor, _ = build_transforms(train=False, min_size=lo, max_size=hi)(img, {"boxes": torch.zeros(0, 4),
                                                                                  "labels": torch.zeros(0, dtype=torch.int64)})
        scale = min(lo / min(h0, w0), hi / max(h0, w0))
        h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        mine = torch.from_numpy(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1).float() / 255
        assert tensor.shape == mine.shape and torch.equal(tensor, mine)


def test_out_refuses_existing_files_and_checkpoints(tmp_path, capsys):
    from detres.config import load_config
    from detres.tasks.detection import build_model

    cfg_path = write_tiny_config(tmp_path)
    model = build_model(load_config(cfg_path), weights=None)
    torch.save({"model": model.state_dict(), "meta": model.weights_meta, "class_names": ["a", "b", "c"]},
               tmp_path / "ck.pth")
    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ck_bytes = (tmp_path / "ck.pth").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert tool.main([str(cfg_path), str(tmp_path / "ck.pth"), "--format", "torchscript", "--out",
                          str(tmp_path / "ck.pth")] + extra) == 2
        assert "checkpoint" in capsys.readouterr().err
    assert (tmp_path / "ck.pth").read_bytes() == ck_bytes
    (tmp_path / "m.pt").write_text("keep me")
    assert tool.main([str(cfg_path), str(tmp_path / "ck.pth"), "--format", "torchscript", "--out",
                      str(tmp_path / "m.pt")]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "m.pt").read_text() == "keep me"
    assert tool.main([str(cfg_path), str(tmp_path / "ck.pth"), "--format", "torchscript", "--out",
                      str(tmp_path / "m.pt"), "--overwrite"]) == 0
    from detres.modeling.export import read_metadata
    assert json.loads(read_metadata(tmp_path / "m.pt")["detres.class_names"]) == ["a", "b", "c"]
