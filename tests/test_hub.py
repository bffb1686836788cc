"""Weights by name (detres.backbones.hub): the table's format, and names served from 127.0.0.1 end to end
(torchvision state dict, Detectron MSRA pkl with its published .md5sum, the Caffe VGG-16 archive with a stand-in
converter), cached after the first use."""
from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import types
import urllib.parse
from dataclasses import replace

import pytest
import torch

from detres.backbones import build_backbone, build_classifier, list_backbones, read_weights
from detres.backbones import hub
from detres.backbones.weights import CAFFE_VGG_META, MSRA_META
from detres.utils.download import parse_checksum
from tests._http_helpers import FileServer, msra_pkl_bytes


def test_the_table_format():
    names = hub.list_weights()
    for must in ("torchvision:resnet50", "torchvision:resnet101", "torchvision:resnet152", "torchvision:vgg16",
                 "msra:R-50", "msra:R-101", "caffe:vgg16"):
        assert must in names
    for name, src in hub.WEIGHTS.items():
        assert re.fullmatch(r"(torchvision|msra|caffe):[A-Za-z0-9._-]+", name)
        assert urllib.parse.urlsplit(src.url).scheme in ("http", "https") and src.cite and src.checksum_note
        assert src.fmt in ("torchvision",) + tuple(hub.CONVERTERS)
        assert src.checksum is not None or src.checksum_url is not None, f"{name}: neither pinned nor published"
        if src.checksum is not None:
            parse_checksum(src.checksum)
        if src.fmt == "torchvision":  # the pinned prefix is the one in the published file name
            file_hash = re.search(r"-([0-9a-f]+)\.pth$", src.url).group(1)
            assert src.checksum == f"sha256-prefix:{file_hash}"
            assert src.arch in list_backbones()
        if src.fmt == "caffe2":
            assert src.checksum_url == src.url + ".md5sum"
    assert hub.WEIGHTS["caffe:vgg16"].checksum == "md5:ed34ca912d6782edfb673a8c3a0bda6d"


def test_names_and_paths_are_told_apart(tmp_path, monkeypatch):
    assert hub.is_weights_name("msra:R-101") and hub.is_weights_name("torchvision:resnet50")
    assert not hub.is_weights_name("data/weights/r.pth") and not hub.is_weights_name(None)
    assert not hub.is_weights_name("s3:thing")  # an unknown source is a path (read_weights says it is missing)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "msra:R-50").write_bytes(b"")
    assert not hub.is_weights_name("msra:R-50")  # a file of that name wins
    with pytest.raises(ValueError, match="unknown weights name 'msra:R-999'.*msra:R-101"):
        read_weights("msra:R-999")


@pytest.fixture()
def served(tmp_path, monkeypatch):
    with FileServer() as s:
        monkeypatch.setenv("DETRES_MIRROR", s.url)
        monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "cache"))
        yield s


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def test_torchvision_name_downloads_once_and_loads(served, monkeypatch, tmp_path):
    torch.manual_seed(0)
    state = build_classifier("resnet18").state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    src = hub.WEIGHTS["torchvision:resnet18"]
    served.files[_path(src.url)] = body
    # the file served is not torchvision's, so the entry gets the served file's hash prefix
    monkeypatch.setitem(hub.WEIGHTS, "torchvision:resnet18",
                        replace(src, checksum=f"sha256-prefix:{hashlib.sha256(body).hexdigest()[:8]}"))
    trunk = build_backbone("resnet18", weights="torchvision:resnet18")
    assert torch.equal(trunk.state_dict()["conv1.weight"], state["conv1.weight"])
    assert trunk.weights_meta["channel_order"] == "RGB"
    assert (tmp_path / "cache" / "torchvision" / "resnet18-f37072fd.pth").is_file()
    build_backbone("resnet18", weights="torchvision:resnet18")
    assert served.count(_path(src.url)) == 1  # cached: no second request
    monkeypatch.setitem(hub.WEIGHTS, "torchvision:resnet18", src)  # the real prefix: the served file fails it
    (tmp_path / "cache" / "torchvision" / "resnet18-f37072fd.pth").unlink()
    with pytest.raises(ValueError, match="checksum mismatch.*sha256-prefix:f37072fd"):
        read_weights("torchvision:resnet18")


def test_msra_name_checks_the_published_md5_converts_once_and_loads(served, monkeypatch, tmp_path):
    body = msra_pkl_bytes(18)
    src = replace(hub.WEIGHTS["msra:R-50"], arch="resnet18",
                  url=hub.WEIGHTS["msra:R-50"].url.replace("R-50", "R-18"),
                  checksum_url=hub.WEIGHTS["msra:R-50"].checksum_url.replace("R-50", "R-18"))
    monkeypatch.setitem(hub.WEIGHTS, "msra:R-18", src)  # a small stand-in registered the way R-50 is
    served.files[_path(src.url)] = body
    served.files[_path(src.checksum_url)] = f"{'0' * 32}  R-18.pkl\n".encode()
    with pytest.raises(ValueError, match=r"checksum mismatch: expected md5:0{32}"):
        build_backbone("resnet18", weights="msra:R-18")
    served.files[_path(src.checksum_url)] = f"{hashlib.md5(body).hexdigest()}  R-18.pkl\n".encode()
    trunk = build_backbone("resnet18", weights="msra:R-18")
    assert trunk.weights_meta["style"] == "msra" and trunk.weights_meta["mean"] == MSRA_META["mean"]
    converted = tmp_path / "cache" / "msra" / "R-18.detres.pth"
    assert converted.is_file() and (tmp_path / "cache" / "msra" / "R-18.pkl").is_file()
    state, meta = read_weights(converted)
    assert meta["weights_name"] == "msra:R-18" and meta["channel_order"] == "BGR"
    assert torch.equal(trunk.state_dict()["conv1.weight"], state["conv1.weight"])
    before = len(served.requests)
    build_backbone("resnet18", weights="msra:R-18")
    assert len(served.requests) == before  # downloaded, checked and converted once


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_caffe_vgg16_unpacks_the_caffemodel_and_calls_the_caffe_converter(served, monkeypatch, tmp_path):
    body = _tgz({"imagenet_models/CaffeNet.v2.caffemodel": b"other", "imagenet_models/VGG16.v2.caffemodel": b"vgg"})
    src = hub.WEIGHTS["caffe:vgg16"]
    monkeypatch.setitem(hub.WEIGHTS, "caffe:vgg16", replace(src, checksum=f"md5:{hashlib.md5(body).hexdigest()}"))
    served.files[_path(src.url)] = body
    torch.manual_seed(0)
    vgg = build_backbone("vgg16", out_features=("conv5",)).state_dict()  # the conv layers: all a trunk loads
    calls = []

    def fake_convert(path, *, arch=None, check=True):  # detres.backbones.caffe's contract
        calls.append((open(path, "rb").read(), arch, check))
        return vgg, dict(CAFFE_VGG_META)

    monkeypatch.setitem(sys.modules, "detres.backbones.caffe", types.SimpleNamespace(convert_caffemodel=fake_convert))
    trunk = build_backbone("vgg16", weights="caffe:vgg16", out_features=("conv5",))
    assert calls == [(b"vgg", "vgg16", True)]
    assert trunk.weights_meta["channel_order"] == "BGR" and trunk.weights_meta["input_range"] == 255.0
    assert torch.equal(trunk.state_dict()["features.0.weight"], vgg["features.0.weight"])
    assert (tmp_path / "cache" / "caffe" / "VGG16.detres.pth").is_file()
    build_backbone("vgg16", weights="caffe:vgg16", out_features=("conv5",))
    assert len(calls) == 1 and served.count(_path(src.url)) == 1


def test_caffe_vgg16_through_the_real_caffemodel_reader(served, monkeypatch, tmp_path):
    """The whole path of ``caffe:vgg16`` with no stand-in: archive -> VGG16.v2.caffemodel (V1 layers, real conv
    shapes; fc6/fc7 tiny and no fc8 to keep it small, so the classifier check is skipped as for a trunk-only file)
    -> detres.backbones.caffe.convert_caffemodel -> the trunk's weights."""
    import numpy as np
    from tests.test_caffemodel import VGG_CONVS, blob, layer, net

    rng, layers, in_ch = np.random.default_rng(0), [], 3
    for stage, n in VGG_CONVS:
        out_ch = min(64 * 2 ** (stage - 1), 512)
        for j in range(1, n + 1):
            w = rng.standard_normal((out_ch, in_ch, 3, 3), dtype=np.float32) * 0.01
            layers.append((f"conv{stage}_{j}", [w, rng.standard_normal(out_ch, dtype=np.float32)]))
            in_ch = out_ch
    fcs = [(n, [rng.standard_normal((4, 4), dtype=np.float32), np.zeros(4, np.float32)]) for n in ("fc6", "fc7")]
    model = net([layer(name, "Convolution", [blob(x, legacy=True) for x in b], v1=True) for name, b in layers]
                + [layer(name, "InnerProduct", [blob(x, legacy=True) for x in b], v1=True) for name, b in fcs])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:  # uncompressed: tarfile detects either
        info = tarfile.TarInfo("imagenet_models/VGG16.v2.caffemodel")
        info.size = len(model)
        t.addfile(info, io.BytesIO(model))
    body = buf.getvalue()
    src = hub.WEIGHTS["caffe:vgg16"]
    monkeypatch.setitem(hub.WEIGHTS, "caffe:vgg16", replace(src, checksum=f"md5:{hashlib.md5(body).hexdigest()}"))
    served.files[_path(src.url)] = body
    trunk = build_backbone("vgg16", weights="caffe:vgg16", out_features=("conv5",))
    sd = trunk.state_dict()
    assert torch.equal(sd["features.0.weight"], torch.from_numpy(layers[0][1][0]))  # conv1_1 -> features.0
    assert torch.equal(sd["features.28.bias"], torch.from_numpy(layers[-1][1][1]))  # conv5_3 -> features.28
    meta = trunk.weights_meta
    assert (meta["channel_order"], meta["input_range"], meta["mean"]) == ("BGR", 255.0, CAFFE_VGG_META["mean"])


def test_offline_name_is_one_line_with_url_and_path(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DETRES_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path))
    with pytest.raises(ValueError) as e:
        read_weights("msra:R-101")
    msg = str(e.value)
    assert "R-101.pkl.md5sum" in msg and "\n" not in msg and "cannot download" in msg
    assert f"place it at {tmp_path / 'msra' / 'R-101.pkl'}" in msg
