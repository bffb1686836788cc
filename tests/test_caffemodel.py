"""``.caffemodel`` files (detres.backbones.caffe): written here by a small protobuf writer with the field numbers
of BVLC/caffe's caffe.proto and the layer names of the published prototxts, then converted and checked against
the Detectron pkl path, a hand-written forward, and damaged or incomplete files."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detres.backbones import build_classifier, read_weights
from detres.backbones.caffe import convert_caffemodel, is_caffemodel, read_caffemodel
from detres.backbones.convert import convert_weights
from detres.backbones.weights import CAFFE_VGG_META, META_KEYS, MSRA_META


# --------------------------------------------------------------------------------------------------
# A protobuf writer with caffe.proto's field numbers
# --------------------------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def blob(arr: np.ndarray, *, legacy: bool = False, packed: bool = True, double: bool = False) -> bytes:
    """BlobProto: shape = 7 (BlobShape.dim = 1) or legacy num/channels/height/width = 1..4; data = 5 or
    double_data = 8, packed (one length-delimited field) or unpacked (a tag before every value)."""
    arr = np.asarray(arr)
    if legacy:
        dims = (1,) * (4 - arr.ndim) + arr.shape
        head = b"".join(varint(f << 3 | 0) + varint(d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = ld(7, ld(1, b"".join(varint(d) for d in arr.shape)))
    field, dtype, wire = (8, "<f8", 1) if double else (5, "<f4", 5)
    values = arr.astype(dtype).ravel()
    if packed:
        return head + ld(field, values.tobytes())
    rec = np.empty(values.size, dtype=[("t", "u1"), ("v", dtype)])
    rec["t"], rec["v"] = field << 3 | wire, values
    return head + rec.tobytes()


V1_TYPES = {"Convolution": 4, "InnerProduct": 14}


def layer(name: str, type_: str, blobs: list[bytes], *, v1: bool = False, eps: float | None = None) -> bytes:
    """A NetParameter entry: ``layer = 100`` (name 1, type 2 string, blobs 7, batch_norm_param 139) or the V1
    ``layers = 2`` (name 4, type 5 enum, blobs 6)."""
    if v1:
        body = ld(4, name.encode()) + varint(5 << 3) + varint(V1_TYPES[type_]) + b"".join(ld(6, b) for b in blobs)
        return ld(2, body)
    body = ld(1, name.encode()) + ld(2, type_.encode()) + b"".join(ld(7, b) for b in blobs)
    if eps is not None:
        body += ld(139, varint(3 << 3 | 5) + np.float32(eps).tobytes())
    return ld(100, body)


def net(chunks: list[bytes], name: str = "net") -> bytes:
    return ld(1, name.encode()) + b"".join(chunks)


# --------------------------------------------------------------------------------------------------
# MSRA ResNet-50, real shapes and the names of ResNet-50-deploy.prototxt
# --------------------------------------------------------------------------------------------------
FACTOR = 999.982  # BatchNorm's third blob after training (1 / (1 - 0.999) in the limit): it must be divided out


def msra_r50_caffe(rng: np.random.Generator) -> list[tuple[str, str, list[np.ndarray]]]:
    """[(layer name, type, blobs)] of an MSRA ResNet-50 with random weights at the real shapes."""
    out = []

    def conv(name, o, i, k, bias=False):
        w = (rng.standard_normal((o, i, k, k), dtype=np.float32) * np.sqrt(1.0 / (i * k * k))).astype(np.float32)
        out.append((name, "Convolution", [w] + ([rng.standard_normal(o, dtype=np.float32) * 0.1] if bias else [])))

    def bn(suffix, n):
        mean = rng.standard_normal(n, dtype=np.float32) * 0.2
        var = (0.5 + rng.random(n, dtype=np.float32))
        out.append(("bn" + suffix, "BatchNorm", [mean * FACTOR, var * FACTOR, np.array([FACTOR], np.float32)]))
        out.append(("scale" + suffix, "Scale", [(0.8 + 0.4 * rng.random(n, dtype=np.float32)),
                                                 rng.standard_normal(n, dtype=np.float32) * 0.1]))

    conv("conv1", 64, 3, 7, bias=True)
    bn("_conv1", 64)
    in_ch = 64
    for s, depth in enumerate((3, 4, 6, 3)):
        stage, planes = s + 2, 64 * 2 ** s
        for i in range(depth):
            unit = f"{stage}{chr(ord('a') + i)}"
            if i == 0:
                conv(f"res{unit}_branch1", planes * 4, in_ch, 1)
                bn(f"{unit}_branch1", planes * 4)
            for br, (o, c, k) in zip(("2a", "2b", "2c"), ((planes, in_ch, 1), (planes, planes, 3), (planes * 4, planes, 1))):
                conv(f"res{unit}_branch{br}", o, c, k)
                bn(f"{unit}_branch{br}", o)
            in_ch = planes * 4
    out.append(("fc1000", "InnerProduct", [rng.standard_normal((1000, 2048), dtype=np.float32) * 0.02,
                                          rng.standard_normal(1000, dtype=np.float32) * 0.1]))
    return out


def detectron_pkl(layers, *, ignore_factor: bool = False) -> dict[str, np.ndarray]:
    """The same weights as Detectron's tools/pickle_caffe_blobs.py stores them: names res2_0_branch2a_w,
    BatchNorm + Scale folded into res2_0_branch2a_bn_s / _bn_b with eps 1e-5, conv1_b, fc1000_w / _b."""
    by_name = {n: b for n, _, b in layers}
    blobs: dict[str, np.ndarray] = {}
    for name, type_, b in layers:
        if type_ == "Convolution":
            unit = "conv1" if name == "conv1" else _detectron_unit(name)
            blobs[unit + "_w"] = b[0]
            if len(b) == 2:
                blobs[unit + "_b"] = b[1]
            suffix = "_conv1" if name == "conv1" else name[len("res"):]
            mean, var, factor = (x.astype(np.float64) for x in by_name["bn" + suffix])
            if not ignore_factor:
                mean, var = mean / factor[0], var / factor[0]
            gamma, beta = by_name["scale" + suffix]
            s = gamma / np.sqrt(var + 1e-5)
            bn_unit = "res_conv1" if name == "conv1" else unit
            blobs[bn_unit + "_bn_s"] = s.astype(np.float32)
            blobs[bn_unit + "_bn_b"] = (beta - mean * s).astype(np.float32)
    blobs["fc1000_w"], blobs["fc1000_b"] = by_name["fc1000"]
    return blobs


def _detectron_unit(name: str) -> str:
    chunk = name[len("res"):name.index("_")]  # "2a", "4b11"
    block = int(chunk[2:]) if len(chunk) > 2 else ord(chunk[1]) - ord("a")
    return f"res{chunk[0]}_{block}{name[name.index('_'):]}"


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    d = tmp_path_factory.mktemp("caffe")
    layers = msra_r50_caffe(np.random.default_rng(0))
    chunks = {name: layer(name, t, [blob(x) for x in b]) for name, t, b in layers}
    path = d / "ResNet-50-model.caffemodel"
    path.write_bytes(net(list(chunks.values()), "ResNet-50"))
    pkl = d / "R-50.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"blobs": detectron_pkl(layers)}, f, protocol=2)
    return {"dir": d, "layers": layers, "chunks": chunks, "path": path, "pkl": pkl}


def test_resnet50_caffemodel_equals_its_detectron_pkl_conversion(r50):
    sd, meta = convert_caffemodel(r50["path"])
    ref, ref_meta, fmt = convert_weights(r50["pkl"])
    assert fmt == "caffe2" and meta["arch"] == ref_meta["arch"] == "resnet50"
    assert sorted(sd) == sorted(ref)
    for k in ref:
        torch.testing.assert_close(sd[k], ref[k], rtol=1e-6, atol=1e-6, msg=k)
    assert {k: meta[k] for k in META_KEYS} == {k: ref_meta[k] for k in META_KEYS} == {k: MSRA_META[k] for k in META_KEYS}
    assert meta["bn_eps"] == 0.0 and meta["source"] == "msra-caffemodel"
    # negative control: the same pkl folded without dividing by BatchNorm's factor is a different network
    with open(r50["dir"] / "no_factor.pkl", "wb") as f:
        pickle.dump(detectron_pkl(r50["layers"], ignore_factor=True), f)
    wrong, _, _ = convert_weights(r50["dir"] / "no_factor.pkl", check=False)
    assert not torch.allclose(wrong["layer1.0.bn1.bias"], sd["layer1.0.bn1.bias"], atol=1e-3)


def _caffe_bn(x, b, suffix):
    """Caffe's BatchNorm (use_global_stats, eps 1e-5, statistics / factor) then Scale, written out."""
    mean, var, factor = (torch.from_numpy(v.astype(np.float64)) for v in b["bn" + suffix])
    gamma, beta = (torch.from_numpy(v.astype(np.float64)) for v in b["scale" + suffix])
    mean, var = mean / factor[0], var / factor[0]
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * gamma.view(shape) + beta.view(shape)


def _reference_r50(b, x):
    """ResNet-50 forward from the Caffe blobs in float64: the MSRA deploy prototxt with the stride of a
    down-sampling unit in its first 1x1 (branch2a and branch1), and detres's classifier stem pool (3x3,
    stride 2, padding 1; the Caffe pool's ceiling rounding is a separate option, caffe_stem_pool)."""
    t = {k: [torch.from_numpy(v.astype(np.float64)) for v in vals] for k, vals in b.items()}
    y = F.conv2d(x, t["conv1"][0], t["conv1"][1], stride=2, padding=3)
    y = F.max_pool2d(F.relu(_caffe_bn(y, b, "_conv1")), 3, 2, 1)
    for s, depth in enumerate((3, 4, 6, 3)):
        for i in range(depth):
            unit, stride = f"{s + 2}{chr(ord('a') + i)}", (2 if s > 0 and i == 0 else 1)
            a = F.relu(_caffe_bn(F.conv2d(y, t[f"res{unit}_branch2a"][0], stride=stride), b, f"{unit}_branch2a"))
            a = F.relu(_caffe_bn(F.conv2d(a, t[f"res{unit}_branch2b"][0], padding=1), b, f"{unit}_branch2b"))
            a = _caffe_bn(F.conv2d(a, t[f"res{unit}_branch2c"][0]), b, f"{unit}_branch2c")
            short = _caffe_bn(F.conv2d(y, t[f"res{unit}_branch1"][0], stride=stride), b, f"{unit}_branch1") \
                if i == 0 else y
            y = F.relu(a + short)
    return F.linear(y.mean((2, 3)), t["fc1000"][0], t["fc1000"][1])


def test_resnet50_logits_equal_a_hand_written_caffe_forward_through_the_tool(r50, capsys):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "_tool_convert_weights", pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    dst = r50["dir"] / "r50_from_caffe.pth"
    assert tool.main([str(r50["path"]), str(dst)]) == 0
    assert "(caffemodel)" in capsys.readouterr().out
    model = build_classifier("resnet50", weights=dst, norm="frozen_bn").eval()
    assert read_weights(dst)[1]["style"] == "msra" and model.layer2[0].conv1.stride == (2, 2)
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64) * 255 - 120
    with torch.no_grad():
        ref = _reference_r50({n: b for n, _, b in r50["layers"]}, x).float()
        out = model(x.float())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_resnet_unpacked_and_double_data_read_the_same(r50):
    """Unpacked floats (a tag before each value) and double_data give the same state dict as packed floats."""
    layers = r50["layers"]
    chunks = [layer(n, t, [blob(x, packed=False, double=(t == "Scale")) for x in b]) for n, t, b in layers]
    path = r50["dir"] / "unpacked.caffemodel"
    path.write_bytes(net(chunks))
    sd, _ = convert_caffemodel(path, check=False)
    ref, _ = convert_caffemodel(r50["path"], check=False)
    assert sorted(sd) == sorted(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_truncated_file_names_the_file_and_offset(r50, tmp_path):
    data = r50["path"].read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.caffemodel: offset \d+: a field of \d+ bytes runs past the end"):
        read_caffemodel(cut)
    with pytest.raises(ValueError, match="cut.caffemodel"):
        convert_weights(cut)


def test_missing_layer_unknown_layer_and_wrong_arch_are_named(r50, tmp_path):
    chunks = dict(r50["chunks"])
    del chunks["scale3b_branch2b"]
    path = tmp_path / "missing.caffemodel"
    path.write_bytes(net(list(chunks.values())))
    with pytest.raises(ValueError, match="missing.caffemodel: resnet50 layer.s. missing: scale3b_branch2b$"):
        convert_caffemodel(path, check=False)
    chunks = dict(r50["chunks"])
    chunks["res3b_branch2z"] = layer("res3b_branch2z", "Convolution", [blob(np.zeros((1, 1, 1, 1), np.float32))])
    path.write_bytes(net(list(chunks.values())))
    with pytest.raises(ValueError, match="not in the MSRA resnet50: res3b_branch2z"):
        convert_caffemodel(path, check=False)
    with pytest.raises(ValueError, match="--arch resnet101 given, but the layers describe a resnet50"):
        convert_caffemodel(r50["path"], arch="resnet101", check=False)


def test_resnet101_names_b1_to_b22_and_stored_eps():
    """ResNet-101's deploy prototxt names conv4_x's units res4a, res4b1..res4b22; a BatchNorm's stored eps is
    used (subset of the layers: the arch inference and the missing-layer list)."""
    from detres.backbones.caffe import _msra_layer_names

    names = _msra_layer_names("resnet101")
    assert "res4b22_branch2c" in names and "res4b23_branch2a" not in names and "res4c_branch2a" not in names
    assert "res3b3_branch2a" in names and "res5c_branch2c" in names and "res2c_branch2a" in names
    assert len([n for n in names if n.startswith("res")]) == 4 + 3 * (3 + 4 + 23 + 3)  # branch1 x4 + 3 per unit
    r152 = _msra_layer_names("resnet152")
    assert "res3b7_branch2a" in r152 and "res4b35_branch2c" in r152 and "res4b36_branch2a" not in r152


def test_bn_eps_from_the_file_is_used(tmp_path):
    from detres.backbones.caffe import CaffeLayer, _fold_bn

    bn = CaffeLayer("bn2a_branch2a", "BatchNorm", [np.array([2.0]), np.array([6.0]), np.array([2.0])], eps=1.0)
    scale = CaffeLayer("scale2a_branch2a", "Scale", [np.array([3.0])])  # bias_term false: beta 0
    s, b = _fold_bn(bn, scale, None, "f")
    assert s.tolist() == [1.5] and b.tolist() == [-1.5]  # mean 1, var 3: 3 / sqrt(3 + 1), 0 - 1 * 1.5
    bn.eps = None
    s, _ = _fold_bn(bn, scale, None, "f")
    assert s[0] == np.float32(3 / np.sqrt(3 + 1e-5))
    bn.blobs[2] = np.array([0.0])  # Caffe: a zero factor makes mean and variance 0
    s, b = _fold_bn(bn, scale, None, "f")
    assert s[0] == np.float32(3 / np.sqrt(1e-5)) and b[0] == 0
    path = tmp_path / "eps.caffemodel"
    path.write_bytes(net([layer("bn_conv1", "BatchNorm", [blob(np.zeros(2))] * 3, eps=1e-3)]))
    assert abs(read_caffemodel(path)[0].eps - 1e-3) < 1e-9
    with pytest.raises(ValueError, match="neither py-faster-rcnn's VGG-16 .* its layers with weights: bn_conv1"):
        convert_caffemodel(path)


# --------------------------------------------------------------------------------------------------
# py-faster-rcnn's VGG-16 (conv1_1 .. fc8), V1 and new layers, at small widths
# --------------------------------------------------------------------------------------------------
VGG_CONVS = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]


def small_vgg_layers(rng, width=4, fc=16, classes=5):
    """VGG-16's layers at 1/16 of the channels (fc6 on a 2x2 pool5 of a 64x64 image); conv1_1 at its real shape."""
    layers, in_ch = [], 3
    for stage, n in VGG_CONVS:
        out_ch = 64 if stage == 1 else width * 2 ** min(stage - 1, 3)
        for j in range(1, n + 1):
            w = (rng.standard_normal((out_ch, in_ch, 3, 3)) * np.sqrt(2 / (in_ch * 9))).astype(np.float32)
            layers.append((f"conv{stage}_{j}", "Convolution", [w, rng.standard_normal(out_ch, dtype=np.float32) * 0.1]))
            in_ch = out_ch
    for name, i, o in (("fc6", in_ch * 4, fc), ("fc7", fc, fc), ("fc8", fc, classes)):
        layers.append((name, "InnerProduct", [(rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32),
                                              rng.standard_normal(o, dtype=np.float32) * 0.1]))
    return layers


def _reference_vgg(layers, x):
    """Caffe's VGG-16 forward from its named blobs: 3x3 convs (pad 1) + ReLU, 2x2 max pools, fc6-fc8."""
    b = {n: [torch.from_numpy(v) for v in vals] for n, _, vals in layers}
    for stage, n in VGG_CONVS:
        for j in range(1, n + 1):
            x = F.relu(F.conv2d(x, *b[f"conv{stage}_{j}"], padding=1))
        x = F.max_pool2d(x, 2, 2)
    x = F.relu(F.linear(x.flatten(1), *b["fc6"]))
    return F.linear(F.relu(F.linear(x, *b["fc7"])), *b["fc8"])


def _torchvision_layout_vgg(sd):
    """torchvision's vgg16 module indices (features.0 .. features.30, classifier.0/3/6) at the file's widths."""
    feats, in_ch = [], 3
    for stage, n in VGG_CONVS:
        for _ in range(n):
            out_ch = sd[f"features.{len(feats)}.weight"].shape[0]
            feats += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
            in_ch = out_ch
        feats.append(nn.MaxPool2d(2, 2))
    fc = [sd[f"classifier.{i}.weight"].shape for i in (0, 3, 6)]
    model = nn.Sequential()
    model.features = nn.Sequential(*feats)
    model.flatten = nn.Flatten()
    model.classifier = nn.Sequential(nn.Linear(fc[0][1], fc[0][0]), nn.ReLU(), nn.Dropout(), nn.Linear(fc[1][1], fc[1][0]),
                                     nn.ReLU(), nn.Dropout(), nn.Linear(fc[2][1], fc[2][0]))
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.mark.parametrize("v1,packed", [(True, False), (False, True), (True, True)])
def test_vgg16_v1_and_new_layers_map_to_torchvision_indices(tmp_path, v1, packed):
    layers = small_vgg_layers(np.random.default_rng(3))
    chunks = [layer("data", "Input", [])] if not v1 else []
    chunks += [layer(n, t, [blob(x, legacy=v1, packed=packed, double=(n == "fc8")) for x in b], v1=v1) for n, t, b in layers]
    path = tmp_path / "VGG16.v2.caffemodel"
    path.write_bytes(net(chunks, "VGG_ILSVRC_16_layers"))
    sd, meta = convert_caffemodel(path, check=False)
    assert meta["arch"] == "vgg16" and {k: meta[k] for k in META_KEYS} == {k: CAFFE_VGG_META[k] for k in META_KEYS}
    assert torch.equal(sd["features.0.weight"], torch.from_numpy(layers[0][2][0]))  # conv1_1 at its real shape
    assert torch.equal(sd["features.28.bias"], torch.from_numpy(layers[12][2][1]))  # conv5_3
    assert torch.equal(sd["classifier.3.weight"], torch.from_numpy(layers[14][2][0]))  # fc7, 2-D from 1x1xoutxin
    x = torch.rand(2, 3, 64, 64) * 255 - 120
    with torch.no_grad():
        torch.testing.assert_close(_torchvision_layout_vgg(sd)(x), _reference_vgg(layers, x), rtol=1e-4, atol=1e-3)


def test_vgg16_strict_check_and_missing_conv(tmp_path):
    layers = small_vgg_layers(np.random.default_rng(4))
    path = tmp_path / "vgg.caffemodel"
    path.write_bytes(net([layer(n, t, [blob(x) for x in b]) for n, t, b in layers]))
    with pytest.raises(ValueError, match="vgg.caffemodel: does not load into vgg16"):
        convert_caffemodel(path)  # 1/16 of the widths: the strict check against build_classifier refuses it
    path.write_bytes(net([layer(n, t, [blob(x) for x in b]) for n, t, b in layers if n != "conv4_2"]))
    with pytest.raises(ValueError, match="VGG-16 layer.s. missing: conv4_2"):
        convert_caffemodel(path, check=False)


def test_format_detection_and_damaged_blobs(r50, tmp_path):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(r50["path"].read_bytes()[:4096])
    assert is_caffemodel(renamed) and not is_caffemodel(r50["pkl"])
    assert convert_weights(r50["path"], fmt="caffemodel", check=False)[2] == "caffemodel"
    bad = tmp_path / "bad.caffemodel"
    five_values = ld(7, ld(1, varint(2) + varint(3))) + ld(5, np.zeros(5, "<f4").tobytes())
    bad.write_bytes(net([layer("fc8", "InnerProduct", [five_values])]))
    with pytest.raises(ValueError, match=r"bad.caffemodel: offset \d+: layer 'fc8' blob 0: 5 values for the shape \[2, 3\]"):
        read_caffemodel(bad)
    bad.write_bytes(b"\x0a\x03net" + b"\xa2\x06\xff\xff\xff\x7f")  # layer = 100 claiming 268 MB
    with pytest.raises(ValueError, match=r"bad.caffemodel: offset 7: a field of 268435455 bytes runs past"):
        read_caffemodel(bad)
    with pytest.raises(ValueError, match="--preprocess torchvision"):
        convert_weights(r50["path"], preprocess="torchvision")
