"""Weight import: MSRA/Caffe2 pkl, torchvision checkpoints, detectron2 R-C4 detectors, and unsafe pickles."""
from __future__ import annotations

import pathlib
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detres.backbones import build_c4, build_classifier, read_weights
from detres.backbones.convert import convert_weights, safe_load_pickle
from detres.modeling.convert import build_converted_detector, converted_detector_spec, detectron2_c4_spec
from detres.backbones.weights import MSRA_META, TORCHVISION_META

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Synthetic MSRA ResNet-50 in Detectron's Caffe2 naming
# --------------------------------------------------------------------------------------------------
def msra_r50_blobs(rng: np.random.Generator, *, num_classes: int = 10):
    """Random blobs in the exact R-50.pkl layout, and the torchvision name each one must become."""
    blobs: dict[str, np.ndarray] = {}
    expected: dict[str, str] = {}

    def add(name, shape, target, scale=0.05):
        arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        if name.endswith("_bn_s"):
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        blobs[name] = arr
        expected[name] = target

    def bn(prefix, n, target):
        add(prefix + "_bn_s", (n,), target + ".weight")
        add(prefix + "_bn_b", (n,), target + ".bias")

    add("conv1_w", (64, 3, 7, 7), "conv1.weight")
    bn("res_conv1", 64, "bn1")
    in_ch = 64
    for s, depth in enumerate((3, 4, 6, 3)):
        stage, planes = s + 2, 64 * 2 ** s
        for i in range(depth):
            p, t = f"res{stage}_{i}", f"layer{stage - 1}.{i}"
            add(p + "_branch2a_w", (planes, in_ch, 1, 1), t + ".conv1.weight")
            bn(p + "_branch2a", planes, t + ".bn1")
            add(p + "_branch2b_w", (planes, planes, 3, 3), t + ".conv2.weight")
            bn(p + "_branch2b", planes, t + ".bn2")
            add(p + "_branch2c_w", (planes * 4, planes, 1, 1), t + ".conv3.weight")
            bn(p + "_branch2c", planes * 4, t + ".bn3")
            if i == 0:
                add(p + "_branch1_w", (planes * 4, in_ch, 1, 1), t + ".downsample.0.weight")
                bn(p + "_branch1", planes * 4, t + ".downsample.1")
            in_ch = planes * 4
    add("pred_w", (num_classes, 2048), "fc.weight")
    add("pred_b", (num_classes,), "fc.bias")
    return blobs, expected


@pytest.fixture(scope="module")
def msra_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    blobs, expected = msra_r50_blobs(rng)
    extra = {"res2_0_branch2a_w_momentum": np.zeros((64, 64, 1, 1), np.float32), "model_iter": np.int64(5),
             "lr": np.float32(0.1)}
    d = tmp_path_factory.mktemp("msra")
    path = d / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {**blobs, **extra}}, f, protocol=2)
    dst = d / "R-50.pth"
    convert_weights(path, dst)
    return path, dst, blobs, expected


def test_msra_every_blob_lands_under_its_torchvision_name(msra_file):
    _, dst, blobs, expected = msra_file
    state, meta = read_weights(dst)
    for name, target in expected.items():
        assert torch.equal(state[target], torch.from_numpy(blobs[name])), name
    # Nothing else but the running statistics the folded BN needs (mean 0, var 1).
    extra = set(state) - set(expected.values())
    assert extra and all(k.endswith(("running_mean", "running_var")) for k in extra)
    assert all(float(state[k].abs().sum()) == 0 for k in extra if k.endswith("running_mean"))
    assert all(bool((state[k] == 1).all()) for k in extra if k.endswith("running_var"))
    assert meta["arch"] == "resnet50" and meta["style"] == "msra" and meta["bn_eps"] == 0.0
    for k in ("channel_order", "input_range", "mean", "std"):
        assert meta[k] == MSRA_META[k]


def test_msra_converted_network_matches_a_hand_built_reference(msra_file):
    _, dst, blobs, _ = msra_file
    trunk, head = build_c4("resnet50", weights=dst, style="msra")
    assert trunk.weights_meta["style"] == "msra"
    b = {k: torch.from_numpy(v) for k, v in blobs.items()}

    def affine(x, prefix):  # Caffe's folded BN: scale and shift per channel
        return x * b[prefix + "_bn_s"].view(1, -1, 1, 1) + b[prefix + "_bn_b"].view(1, -1, 1, 1)

    x = torch.randn(1, 3, 64, 64)
    ref_stem = F.max_pool2d(F.relu(affine(F.conv2d(x, b["conv1_w"], stride=2, padding=3), "res_conv1")), 3, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(trunk.stem(x), ref_stem, rtol=1e-4, atol=1e-4)

        # res3_0: the first, down-sampling block of conv3_x; msra puts the stride in branch2a (1x1).
        y = torch.randn(1, 256, 16, 16)
        p = "res3_0"
        a = F.relu(affine(F.conv2d(y, b[p + "_branch2a_w"], stride=2), p + "_branch2a"))
        a = F.relu(affine(F.conv2d(a, b[p + "_branch2b_w"], padding=1), p + "_branch2b"))
        a = affine(F.conv2d(a, b[p + "_branch2c_w"]), p + "_branch2c")
        short = affine(F.conv2d(y, b[p + "_branch1_w"], stride=2), p + "_branch1")
        ref = F.relu(a + short)
        torch.testing.assert_close(trunk.layer2[0](y), ref, rtol=1e-4, atol=1e-4)


def test_msra_classifier_loads_with_strict_keys(msra_file):
    _, dst, blobs, _ = msra_file
    model = build_classifier("resnet50", num_classes=10, style="msra", norm="frozen_bn", weights=dst)
    torch.testing.assert_close(model.fc.weight.detach(), torch.from_numpy(blobs["pred_w"]))


def test_flat_caffe2_dict_and_unknown_blob(tmp_path):
    rng = np.random.default_rng(1)
    blobs, _ = msra_r50_blobs(rng, num_classes=2)
    path = tmp_path / "flat.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    sd, meta, fmt = convert_weights(path)
    assert fmt == "caffe2" and meta["arch"] == "resnet50"
    with open(path, "wb") as f:
        pickle.dump({**blobs, "res2_0_branch2d_w": np.zeros(1, np.float32)}, f)
    with pytest.raises(ValueError, match="res2_0_branch2d_w"):
        convert_weights(path)


# --------------------------------------------------------------------------------------------------
# Safety
# --------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would call pathlib.Path.touch(marker): a harmless stand-in for os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _SystemPayload:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_code_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": _Payload(marker)}}, f)
    with pytest.raises(ValueError, match="unsafe pickle.*pathlib"):
        convert_weights(path, tmp_path / "out.pth")
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()
    # Python's own unpickler would have run it: the payload is real.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_os_system_payload_is_refused(tmp_path):
    path = tmp_path / "evil2.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": _SystemPayload()}}, protocol=4))
    with pytest.raises(ValueError, match=r"evil2\.pkl.*(posix|os|nt)\.system"):
        safe_load_pickle(path)


def test_python2_style_pickle_with_byte_strings_loads(tmp_path):
    """Detectron's R-50.pkl is a Python 2 pickle: numpy buffers are py2 `str` (BINSTRING) objects."""
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = arr.tobytes()

    def binstring(b: bytes) -> bytes:
        return b"T" + len(b).to_bytes(4, "little") + b

    def short(s: str) -> bytes:
        return b"U" + bytes([len(s)]) + s.encode()

    p = b"\x80\x02}q\x00"  # PROTO 2, EMPTY_DICT
    p += short("conv1_w")
    p += b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + short("b") + b"\x87R"
    p += b"(K\x01K\x02K\x03\x86" + b"cnumpy\ndtype\n" + short("f4") + b"K\x00K\x01\x87R"
    p += b"(K\x03" + short("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    p += b"\x89" + binstring(raw) + b"tb"  # NEWFALSE, data, TUPLE, BUILD
    p += b"s."  # SETITEM, STOP
    path = tmp_path / "py2.pkl"
    path.write_bytes(p)
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["conv1_w"], arr)


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------
def test_torchvision_checkpoint_identity_checked(tmp_path):
    src = tmp_path / "resnet18-tv.pth"
    state = build_classifier("resnet18", num_classes=7).state_dict()
    torch.save(state, src)
    sd, meta, fmt = convert_weights(src, tmp_path / "out.pth")
    assert fmt == "torchvision" and meta["arch"] == "resnet18"
    assert {k: meta[k] for k in TORCHVISION_META} == TORCHVISION_META
    assert all(torch.equal(sd[k], v) for k, v in state.items())
    back, _ = read_weights(tmp_path / "out.pth")
    assert set(back) == set(state)

    bad = dict(state)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # wrong shape
    torch.save(bad, src)
    with pytest.raises(ValueError, match="resnet18-tv.pth"):
        convert_weights(src)
    with pytest.raises(ValueError, match="resnet34"):
        torch.save(state, src)
        convert_weights(src, arch="resnet34")


# --------------------------------------------------------------------------------------------------
# detectron2 R50-C4
# --------------------------------------------------------------------------------------------------
SIZES, RATIOS = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)


def d2_r50_c4(rng: np.random.Generator, num_fg: int):
    """A random detectron2 R50-C4 Faster R-CNN "model" dict, in detectron2's names."""
    m: dict[str, np.ndarray] = {}

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.01

    def norm(prefix, n):
        m[prefix + ".norm.weight"] = 1 + arr(n)
        m[prefix + ".norm.bias"] = arr(n)
        m[prefix + ".norm.running_mean"] = arr(n)
        m[prefix + ".norm.running_var"] = 1 + np.abs(arr(n))

    m["backbone.stem.conv1.weight"] = arr(64, 3, 7, 7)
    norm("backbone.stem.conv1", 64)
    in_ch = 64
    for s, depth in enumerate((3, 4, 6, 3)):
        planes = 64 * 2 ** s
        base = f"backbone.res{s + 2}" if s < 3 else "roi_heads.res5"
        for i in range(depth):
            p = f"{base}.{i}"
            for k, shape in ((1, (planes, in_ch, 1, 1)), (2, (planes, planes, 3, 3)), (3, (planes * 4, planes, 1, 1))):
                m[f"{p}.conv{k}.weight"] = arr(*shape)
                norm(f"{p}.conv{k}", shape[0])
            if i == 0:
                m[f"{p}.shortcut.weight"] = arr(planes * 4, in_ch, 1, 1)
                norm(f"{p}.shortcut", planes * 4)
            in_ch = planes * 4
    a = len(SIZES) * len(RATIOS)
    m["proposal_generator.rpn_head.conv.weight"] = arr(1024, 1024, 3, 3)
    m["proposal_generator.rpn_head.conv.bias"] = arr(1024)
    m["proposal_generator.rpn_head.objectness_logits.weight"] = arr(a, 1024, 1, 1)
    m["proposal_generator.rpn_head.objectness_logits.bias"] = np.arange(a, dtype=np.float32)
    m["proposal_generator.rpn_head.anchor_deltas.weight"] = arr(a * 4, 1024, 1, 1)
    m["proposal_generator.rpn_head.anchor_deltas.bias"] = np.arange(a * 4, dtype=np.float32)
    m["roi_heads.box_predictor.cls_score.weight"] = arr(num_fg + 1, 2048)
    m["roi_heads.box_predictor.cls_score.bias"] = np.arange(num_fg + 1, dtype=np.float32)
    m["roi_heads.box_predictor.bbox_pred.weight"] = arr(num_fg * 4, 2048)
    m["roi_heads.box_predictor.bbox_pred.bias"] = np.arange(num_fg * 4, dtype=np.float32) + 1
    m["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32).reshape(3, 1, 1)
    m["pixel_std"] = np.ones((3, 1, 1), np.float32)
    return m


def _d2_cell_anchors():
    """detectron2's DefaultAnchorGenerator order: for size, for ratio (h / w = ratio)."""
    out = []
    for size in SIZES:
        for r in RATIOS:
            w = (size * size / r) ** 0.5
            out.append((w, r * w))
    return out


def test_detectron2_r50_c4_converts_into_build_detector(tmp_path, capsys):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    num_fg = 3
    d2 = d2_r50_c4(np.random.default_rng(2), num_fg)
    src = tmp_path / "model_final.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": d2, "__author__": "Detectron2 Model Zoo"}, f)
    dst = tmp_path / "d2_r50_c4.pth"
    sd, meta, fmt = convert_weights(src, dst)
    assert fmt == "detectron2"
    assert meta["mean"] == pytest.approx([103.53, 116.28, 123.675]) and meta["channel_order"] == "BGR"
    assert meta["detector"] == {"recipe": "detectron2_c4", "backbone": "resnet50", "num_classes": num_fg + 1}
    spec, num_classes = converted_detector_spec(meta)
    assert spec == detectron2_c4_spec("resnet50") and num_classes == num_fg + 1
    assert (spec.pooler.aligned, spec.pooler.sampling_ratio, spec.pooler.resolution) == (True, 0, 14)
    assert spec.rpn.anchor_sizes == tuple(SIZES) and (spec.roi.nms_thresh, spec.rpn.post_nms_top_n_test) == (0.5, 1000)
    # a file converted before the recipe was recorded (build_detector's old keywords) builds the same spec
    legacy = {"detector": {"backbone": "resnet50", "num_classes": num_fg + 1, "pooler_aligned": True}}
    assert converted_detector_spec(legacy) == (spec, num_fg + 1)
    # the tool says which detector the file makes; a changed copy of the file's spec builds that one instead
    assert _load_tool("convert_weights").main([str(src), str(tmp_path / "again.pth")]) == 0
    assert f"= build_detector({spec}, {num_fg + 1})" in capsys.readouterr().out
    lower = replace(spec, roi=replace(spec.roi, score_thresh=0.0))
    assert build_converted_detector(dst, spec=lower).roi_heads.score_thresh == 0.0

    model = build_converted_detector(dst)  # strict: every key of build_detector's model is filled
    assert set(model.state_dict()) == set(sd)
    assert model.transform.bgr and model.transform.image_mean == pytest.approx([103.53, 116.28, 123.675])
    assert model.transform.resize_images and model.transform.min_size == (800,)  # detectron2 resizes to 800
    assert model.backbone.bn1.eps == 1e-5  # detectron2's FrozenBatchNorm2d
    assert model.roi_heads.box_roi_pool.aligned and model.roi_heads.box_roi_pool.output_size == 14
    assert model.backbone.layer2[0].conv1.stride == (2, 2)  # msra: stride in the 1x1

    # Background: last in detectron2, first in torchvision; the foreground classes keep their order.
    cls_b = model.roi_heads.box_predictor.cls_score.bias.detach()
    assert cls_b.tolist() == [float(num_fg)] + list(range(num_fg))
    box_b = model.roi_heads.box_predictor.bbox_pred.bias.detach()
    assert box_b[:4].tolist() == [0, 0, 0, 0] and box_b[4:].tolist() == [float(v) for v in range(1, num_fg * 4 + 1)]

    # RPN: torchvision anchor j must read detectron2's channel for the anchor of the same shape.
    tv = AnchorGenerator(sizes=(SIZES,), aspect_ratios=(RATIOS,)).cell_anchors[0]
    tv_wh = [(float(x2 - x1), float(y2 - y1)) for x1, y1, x2, y2 in tv]
    d2_wh = _d2_cell_anchors()
    obj = model.rpn.head.cls_logits.bias.detach()
    deltas = model.rpn.head.bbox_pred.bias.detach().view(-1, 4)
    d2_deltas = torch.from_numpy(d2["proposal_generator.rpn_head.anchor_deltas.bias"]).view(-1, 4)
    for j, (w, h) in enumerate(tv_wh):
        i = min(range(len(d2_wh)), key=lambda k: abs(d2_wh[k][0] - w) + abs(d2_wh[k][1] - h))
        assert abs(d2_wh[i][0] - w) <= 1 and abs(d2_wh[i][1] - h) <= 1
        assert obj[j] == float(i)
        assert torch.equal(deltas[j], d2_deltas[i])

    # The head's res5 and the trunk's BN statistics carry over by name.
    torch.testing.assert_close(model.roi_heads.box_head.layer4[0].conv1.weight.detach(),
                               torch.from_numpy(d2["roi_heads.res5.0.conv1.weight"]))
    torch.testing.assert_close(model.backbone.layer3[5].bn2.running_var,
                               torch.from_numpy(d2["backbone.res4.5.conv2.norm.running_var"]))
    with torch.no_grad():
        model.eval()
        out = model([torch.rand(3, 64, 80)])
    assert out[0]["boxes"].shape[1] == 4


def _load_tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_tool_cli(tmp_path, capsys):
    tool = _load_tool("convert_weights")
    src = tmp_path / "r18.pth"
    torch.save(build_classifier("resnet18", num_classes=3).state_dict(), src)
    dst = tmp_path / "out" / "r18_detres.pth"
    assert tool.main([str(src), str(dst)]) == 0
    assert dst.is_file() and "resnet18" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "nope.pkl"), str(dst)]) == 2
    assert "nope.pkl" in capsys.readouterr().err


def test_msra_imagenet_layout_fc1000_and_conv1_bias_fold_exactly(tmp_path):
    """The MSRA ImageNet files: {"blobs": ...}, the classifier as fc1000_*, a conv1_b on the stem and solver
    bookkeeping. The converted classifier equals a reference that applies conv1's bias explicitly."""
    import torch.nn as nn

    rng = np.random.default_rng(1)
    blobs, _ = msra_r50_blobs(rng, num_classes=7)
    blobs["fc1000_w"], blobs["fc1000_b"] = blobs.pop("pred_w"), blobs.pop("pred_b")
    blobs["conv1_b"] = (rng.standard_normal(64) * 0.5).astype(np.float32)
    blobs["res_conv1_bn_rm"] = (rng.standard_normal(64) * 0.1).astype(np.float32)  # also with stored statistics
    blobs["res_conv1_bn_riv"] = (1 + rng.random(64)).astype(np.float32)
    blobs.update({"model_iter": np.array(5), "lr": np.array(0.1, np.float32),
                  "res2_0_branch2a_w_momentum": np.zeros((64, 64, 1, 1), np.float32)})
    src = tmp_path / "R-50.pkl"
    with open(src, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    sd, meta, fmt = convert_weights(src, tmp_path / "r50.pth")
    assert fmt == "caffe2" and "fc.weight" in sd and "conv1.bias" not in sd
    assert meta["conversion"]["dropped_keys"] == ["lr", "model_iter", "res2_0_branch2a_w_momentum"]
    assert any("conv1_b folded" in n for n in meta["conversion"]["notes"])

    converted = build_classifier("resnet50", num_classes=7, style="msra", norm="frozen_bn", weights=tmp_path / "r50.pth")
    # the reference keeps the bias in conv1 and bn1's original running mean
    reference = build_classifier("resnet50", num_classes=7, style="msra", norm="frozen_bn", weights=tmp_path / "r50.pth")
    conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(blobs["conv1_w"]))
        conv.bias.copy_(torch.from_numpy(blobs["conv1_b"]))
        reference.bn1.running_mean.copy_(torch.from_numpy(blobs["res_conv1_bn_rm"]))
    reference.conv1 = conv
    assert reference.layer2[0].conv1.stride == (2, 2)  # msra: the stride in the 1x1
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-4)
    # the fold matters: without it the logits differ
    plain = build_classifier("resnet50", num_classes=7, style="msra", norm="frozen_bn", weights=tmp_path / "r50.pth")
    with torch.no_grad():
        plain.bn1.running_mean.copy_(torch.from_numpy(blobs["res_conv1_bn_rm"]))
        assert not torch.allclose(plain.eval()(x), reference(x), rtol=1e-3, atol=1e-3)


def test_zero_conv1_bias_is_reported_and_unknown_blob_named(tmp_path):
    blobs, _ = msra_r50_blobs(np.random.default_rng(2))
    blobs["conv1_b"] = np.zeros(64, np.float32)
    src = tmp_path / "R-50.pkl"
    with open(src, "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    _, meta, _ = convert_weights(src)
    assert meta["conversion"]["notes"] == ["conv1_b is all zeros: nothing to fold"]
    blobs["res2_0_branch2z_w"] = np.zeros(1, np.float32)
    with open(src, "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    with pytest.raises(ValueError, match="res2_0_branch2z_w"):
        convert_weights(src)


def test_caffe_preprocessing_for_a_torchvision_layout_file(tmp_path):
    """A Caffe model in torchvision's layout (the paper's VGG-16 as vgg16_caffe.pth) gets BGR, 0-255 and
    py-faster-rcnn's pixel means; the detector then normalises that way. (ResNet-18 stands in for VGG-16's
    553 MB: the mechanism is the layout-independent meta.)"""
    from detres.backbones.weights import CAFFE_VGG_META
    from detres.modeling import BackboneSpec, DetectorSpec, build_detector

    src = tmp_path / "caffe_layout.pth"
    torch.save(build_classifier("resnet18").state_dict(), src)
    _, meta, _ = convert_weights(src, tmp_path / "out.pth", preprocess="caffe")
    assert (meta["channel_order"], meta["input_range"], meta["mean"]) == ("BGR", 255.0, [102.9801, 115.9465, 122.7717])
    det = build_detector(DetectorSpec(backbone=BackboneSpec(name="resnet18", weights=tmp_path / "out.pth")), 3)
    img = torch.rand(3, 16, 16)
    expect = img.flip(0) * 255.0 - torch.tensor(CAFFE_VGG_META["mean"])[:, None, None]
    torch.testing.assert_close(det.transform.normalize(img), expect)
    _, tv_meta, _ = convert_weights(src, preprocess="torchvision")
    assert tv_meta["channel_order"] == "RGB"
    with pytest.raises(ValueError, match="already records its preprocessing"):
        convert_weights(tmp_path / "out.pth", preprocess="torchvision")


def test_preprocess_contradicting_an_msra_file_is_refused(msra_file, tmp_path):
    path = msra_file[0] if isinstance(msra_file, tuple) else msra_file
    with pytest.raises(ValueError, match="--preprocess torchvision"):
        convert_weights(path, preprocess="torchvision")
    _, meta, _ = convert_weights(path, preprocess="caffe")
    assert meta["style"] == "msra"
