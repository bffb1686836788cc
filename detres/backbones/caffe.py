"""The paper's own weights as Caffe wrote them: ``.caffemodel`` files read without Caffe or ``protobuf``.

A ``.caffemodel`` is one binary protobuf ``NetParameter``. This module reads the few fields it needs with a
small reader of the protobuf wire format (varints, length-delimited fields, 32/64-bit fixed values; repeated
numbers packed or unpacked, as any protobuf parser must accept), bounded everywhere: a length that runs past
the end of its message (a truncated download) is a ``ValueError`` naming the file and the byte offset.

Field numbers, from BVLC/caffe ``src/caffe/proto/caffe.proto`` (commit 9b89154):

* ``NetParameter``: ``layer = 100`` (``LayerParameter``, line 92), the legacy ``layers = 2``
  (``V1LayerParameter``, line 95).
* ``LayerParameter``: ``name = 1``, ``type = 2`` (a string; lines 327-328), ``blobs = 7`` (line 345),
  ``batch_norm_param = 139`` (line 379), whose ``eps = 3`` defaults to 1e-5 (line 545).
* ``V1LayerParameter``: ``name = 4`` (line 1258), ``type = 5`` (line 1303, an enum: ``CONVOLUTION = 4`` line 1269,
  ``INNER_PRODUCT = 14`` line 1284), ``blobs = 6`` (line 1304). The enum has no BatchNorm or Scale, so only
  plain nets (the VGG-16) can be V1 files.
* ``BlobProto``: ``shape = 7`` (``BlobShape.dim = 1``, int64, lines 7 and 11), ``data = 5`` (float, line 12),
  ``double_data = 8`` (line 14), the deprecated 4-D ``num/channels/height/width = 1..4`` (lines 18-21). As
  Caffe's ``Blob::FromProto`` (src/caffe/blob.cpp lines 469-499): the 4-D fields win when any is present, and
  ``double_data`` when it is not empty.

Two networks are converted to torchvision's layout (:func:`convert_caffemodel`):

* py-faster-rcnn's VGG-16 (``VGG16.v2.caffemodel``; ``conv1_1``..``conv5_3``, ``fc6``, ``fc7``, ``fc8``) ->
  ``features.N`` / ``classifier.N`` of torchvision's ``vgg16``, meta ``CAFFE_VGG_META`` (BGR, 0-255, pixel
  means). Caffe's InnerProduct weight is (out, in) over the C x H x W flattening, as torch's ``Linear``.
* The MSRA ``ResNet-50/101/152-model.caffemodel`` (layer names of KaimingHe/deep-residual-networks
  ``prototxt/ResNet-*-deploy.prototxt``: ``conv1``, ``bn_conv1``, ``scale_conv1``, ``res2a_branch2a``,
  ``bn2a_branch2a``, ``scale2a_branch2a``, ..., ``res4b22_branch2c``, ``fc1000``). Each ``BatchNorm`` (blobs:
  mean and variance, both multiplied by the moving-average factor, and that factor: divided out as
  src/caffe/layers/batch_norm_layer.cpp lines 100-105 do, a factor 0 giving 0) and the ``Scale`` after it
  (gamma, and beta when ``bias_term``) are folded into one affine ``s = gamma / sqrt(var + eps)``,
  ``b = beta - mean * s`` with the layer's eps (Caffe's default 1e-5) -- the form Detectron's
  tools/pickle_caffe_blobs.py (lines 141-148) stores as ``<unit>_bn_s`` / ``_bn_b``. The blobs are renamed as
  Detectron names them (``res4b22_branch2c`` -> ``res4_22_branch2c``, lines 75-88 there) and handed to
  :func:`detres.backbones.convert.convert_caffe2_resnet`, so a ``.caffemodel`` and its Detectron pkl give the
  same state dict and the same meta (``MSRA_META``: msra style, BGR, 0-255, bn_eps 0). (Detectron's script
  reads the statistics without the factor, lines 142-143: the same numbers only when the factor is 1.)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CaffeLayer", "read_caffemodel", "is_caffemodel", "convert_caffemodel"]

# caffe.proto field numbers (see the module docstring for their lines).
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS, _LAYER_BN_PARAM = 1, 2, 7, 139
_BN_EPS = 3
_V1_NAME, _V1_TYPE, _V1_BLOBS = 4, 5, 6
_BLOB_LEGACY = (1, 2, 3, 4)  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE, _SHAPE_DIM = 5, 7, 8, 1
#: V1LayerParameter.LayerType values of the layers that carry weights.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
#: BatchNormParameter.eps's default (caffe.proto line 545).
CAFFE_BN_EPS = 1e-5

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its name, type (V1 enums as the new type string) and blobs (numpy
    arrays in Caffe's shape: convolutions O x I x kH x kW, InnerProduct out x in, or the legacy 4-D
    1 x 1 x out x in); ``eps`` is a BatchNorm layer's stored ``eps`` (None: Caffe's default)."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    eps: float | None = None


# ----------------------------------------------------------------------------------------------
# The wire format
# ----------------------------------------------------------------------------------------------


class _Wire:
    """Bounded reads from the bytes of one file; every error names the file and the byte offset."""

    def __init__(self, buf: bytes, path: str):
        self.buf, self.path = buf, path

    def error(self, pos: int, what: str) -> ValueError:
        return ValueError(f"{self.path}: offset {pos}: {what} (a truncated or damaged .caffemodel?)")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result, shift, start = 0, 0, pos
        while True:
            if pos >= end:
                raise self.error(start, "a varint runs past the end of its message")
            b = self.buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.error(start, "a varint longer than 10 bytes")

    def tag(self, pos: int, end: int) -> tuple[int, int, int]:
        """(field number, wire type, position after the tag)."""
        key, after = self.varint(pos, end)
        field_no, wire = key >> 3, key & 7
        if field_no == 0 or wire not in (_VARINT, _FIXED64, _LENGTH, _FIXED32):
            raise self.error(pos, f"field {field_no} with wire type {wire}: not a message Caffe writes")
        return field_no, wire, after

    def span(self, pos: int, end: int) -> tuple[int, int]:
        """A length-delimited field's payload [start, stop); its length is checked against ``end``."""
        n, start = self.varint(pos, end)
        if n > end - start:
            raise self.error(pos, f"a field of {n} bytes runs past the end of its message ({end - start} left)")
        return start, start + n

    def skip(self, wire: int, pos: int, end: int) -> int:
        if wire == _VARINT:
            return self.varint(pos, end)[1]
        if wire == _LENGTH:
            return self.span(pos, end)[1]
        width = 8 if wire == _FIXED64 else 4
        if pos + width > end:
            raise self.error(pos, f"a {width}-byte value runs past the end of its message")
        return pos + width

    def packed(self, start: int, stop: int, dtype: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        if (stop - start) % size:
            raise self.error(start, f"{stop - start} bytes of packed {dtype} values (not a multiple of {size})")
        return np.frombuffer(self.buf, dtype, (stop - start) // size, start)

    def unpacked_run(self, tag_pos: int, end: int, dtype: str) -> tuple[np.ndarray, int]:
        """Consecutive unpacked values of one fixed-width field whose one-byte tag is at ``tag_pos``:
        read at once as records (tag, value) while the tag repeats. Returns (values, position after)."""
        size = np.dtype(dtype).itemsize
        rows = (end - tag_pos) // (1 + size)
        if rows == 0:
            raise self.error(tag_pos, f"a {size}-byte value runs past the end of its message")
        records = np.frombuffer(self.buf, np.uint8, rows * (1 + size), tag_pos).reshape(rows, 1 + size)
        same = records[:, 0] == self.buf[tag_pos]
        n = rows if bool(same.all()) else int(np.argmin(same))
        return records[:n, 1:].copy().view(dtype).reshape(-1), tag_pos + n * (1 + size)


def _signed(value: int) -> int:
    """An int32/int64 field's value (negative numbers are 10-byte varints of two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _read_dims(w: _Wire, start: int, stop: int) -> list[int]:
    """BlobShape.dim: int64 values, packed or not."""
    dims, pos = [], start
    while pos < stop:
        field_no, wire, pos = w.tag(pos, stop)
        if field_no == _SHAPE_DIM and wire == _LENGTH:
            s, e = w.span(pos, stop)
            while s < e:
                value, s = w.varint(s, e)
                dims.append(_signed(value))
            pos = e
        elif field_no == _SHAPE_DIM and wire == _VARINT:
            value, pos = w.varint(pos, stop)
            dims.append(_signed(value))
        else:
            pos = w.skip(wire, pos, stop)
    return dims


def _read_blob(w: _Wire, start: int, stop: int, where: str) -> np.ndarray:
    """One BlobProto -> a numpy array of its shape (float32, or float64 from double_data)."""
    dims, legacy, floats, doubles, pos = None, {}, [], [], start
    while pos < stop:
        tag_pos = pos
        field_no, wire, pos = w.tag(pos, stop)
        if field_no == _BLOB_SHAPE and wire == _LENGTH:
            s, pos = w.span(pos, stop)
            dims = _read_dims(w, s, pos)
        elif field_no in (_BLOB_DATA, _BLOB_DOUBLE) and wire == _LENGTH:
            s, pos = w.span(pos, stop)
            (floats if field_no == _BLOB_DATA else doubles).append(
                w.packed(s, pos, "<f4" if field_no == _BLOB_DATA else "<f8"))
        elif field_no == _BLOB_DATA and wire == _FIXED32:
            values, pos = w.unpacked_run(tag_pos, stop, "<f4")
            floats.append(values)
        elif field_no == _BLOB_DOUBLE and wire == _FIXED64:
            values, pos = w.unpacked_run(tag_pos, stop, "<f8")
            doubles.append(values)
        elif field_no in _BLOB_LEGACY and wire == _VARINT:
            value, pos = w.varint(pos, stop)
            legacy[field_no] = _signed(value)
        else:
            pos = w.skip(wire, pos, stop)
    shape = [legacy.get(k, 0) for k in _BLOB_LEGACY] if legacy else (dims or [])
    if any(d < 0 for d in shape):
        raise w.error(start, f"{where}: negative dimension in shape {shape}")
    values = np.concatenate(doubles) if doubles else (np.concatenate(floats) if floats else np.zeros(0, np.float32))
    if values.size != int(np.prod(shape)):
        raise w.error(start, f"{where}: {values.size} values for the shape {shape}")
    return values.reshape(shape)


def _read_layer(w: _Wire, start: int, stop: int, v1: bool) -> CaffeLayer:
    name_no, type_no, blobs_no = (_V1_NAME, _V1_TYPE, _V1_BLOBS) if v1 else (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS)
    layer, blob_spans, pos = CaffeLayer(name="", type=""), [], start
    while pos < stop:
        field_no, wire, pos = w.tag(pos, stop)
        if field_no == name_no and wire == _LENGTH:
            s, pos = w.span(pos, stop)
            layer.name = w.buf[s:pos].decode("utf-8", errors="replace")
        elif field_no == type_no and wire == _LENGTH and not v1:
            s, pos = w.span(pos, stop)
            layer.type = w.buf[s:pos].decode("utf-8", errors="replace")
        elif field_no == type_no and wire == _VARINT and v1:
            value, pos = w.varint(pos, stop)
            layer.type = _V1_TYPES.get(value, f"V1 type {value}")
        elif field_no == blobs_no and wire == _LENGTH:
            blob_spans.append(w.span(pos, stop))
            pos = blob_spans[-1][1]
        elif field_no == _LAYER_BN_PARAM and wire == _LENGTH and not v1:
            s, pos = w.span(pos, stop)
            layer.eps = _read_bn_eps(w, s, pos)
        else:
            pos = w.skip(wire, pos, stop)
    for i, (s, e) in enumerate(blob_spans):
        layer.blobs.append(_read_blob(w, s, e, f"layer '{layer.name}' blob {i}"))
    return layer


def _read_bn_eps(w: _Wire, start: int, stop: int) -> float | None:
    eps, pos = None, start
    while pos < stop:
        field_no, wire, pos = w.tag(pos, stop)
        if field_no == _BN_EPS and wire == _FIXED32:
            end = w.skip(wire, pos, stop)  # checks the 4 bytes are there
            eps, pos = float(np.frombuffer(w.buf, "<f4", 1, pos)[0]), end
        else:
            pos = w.skip(wire, pos, stop)
    return eps


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """The layers of a ``.caffemodel`` in file order (new-style ``layer`` and legacy ``layers`` alike).

    ValueError (naming the file, and the byte offset for damage) when the file is missing, empty, damaged
    or holds no layers."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    buf = path.read_bytes()
    w, layers, pos = _Wire(buf, str(path)), [], 0
    while pos < len(buf):
        field_no, wire, pos = w.tag(pos, len(buf))
        if field_no in (_NET_LAYER, _NET_LAYERS_V1) and wire == _LENGTH:
            s, pos = w.span(pos, len(buf))
            layers.append(_read_layer(w, s, pos, v1=field_no == _NET_LAYERS_V1))
        else:
            pos = w.skip(wire, pos, len(buf))
    if not layers:
        raise ValueError(f"{path}: no layers (field 100 or 2 of a NetParameter): not a .caffemodel")
    return layers


def is_caffemodel(path: str | os.PathLike) -> bool:
    """True for a ``.caffemodel`` name, or content that starts as a NetParameter does: a length-delimited
    ``name`` (1), ``layers`` (2), ``input`` (3), ``input_shape`` (8) or ``layer`` (100) that fits in the file.
    Pickles (0x80 / ``(``), zip files (``PK``) and torch files never start that way."""
    path = Path(path)
    if path.suffix.lower() == ".caffemodel":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = path.stat().st_size
        field_no, wire, pos = _Wire(head, str(path)).tag(0, len(head))
        n, start = _Wire(head, str(path)).varint(pos, len(head))
    except (OSError, ValueError):
        return False
    return wire == _LENGTH and field_no in (1, 2, 3, 8, 100) and start + n <= size


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def _squeeze(arr: np.ndarray, ndim: int, where: str) -> np.ndarray:
    """Drop leading 1s of a legacy 4-D blob (1 x 1 x out x in, 1 x 1 x 1 x n) down to ``ndim`` axes."""
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{where}: shape {list(arr.shape)}, expected {ndim} axes")
    return arr


def _layer(layers: dict[str, CaffeLayer], name: str, kind: str, nblobs: tuple[int, ...], path: str) -> CaffeLayer:
    layer = layers[name]
    if layer.type != kind:
        raise ValueError(f"{path}: layer '{name}' is a {layer.type or '?'} layer, expected {kind}")
    if len(layer.blobs) not in nblobs:
        raise ValueError(f"{path}: layer '{name}' has {len(layer.blobs)} blobs, expected {' or '.join(map(str, nblobs))}")
    return layer


def _vgg_targets() -> dict[str, str]:
    """Caffe VGG-16 layer -> torchvision module (``features.N`` counted from configuration D, as vgg.py)."""
    from detres.backbones.vgg import _CFG_D

    targets, index, stage, conv = {}, 0, 1, 1
    for v in _CFG_D:
        if v == "M":
            index, stage, conv = index + 1, stage + 1, 1
        else:
            targets[f"conv{stage}_{conv}"] = f"features.{index}"
            index, conv = index + 2, conv + 1  # conv + ReLU
    return {**targets, "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}


def _convert_vgg(layers: dict[str, CaffeLayer], path: str, check: bool) -> tuple[dict[str, torch.Tensor], dict]:
    from detres.backbones.convert import _check_loads_into_classifier
    from detres.backbones.weights import CAFFE_VGG_META

    targets = _vgg_targets()
    missing = [n for n in targets if n != "fc8" and n not in layers]
    if missing:
        raise ValueError(f"{path}: VGG-16 layer(s) missing: {', '.join(missing)}")
    unknown = sorted(n for n in layers if n not in targets)
    if unknown:
        raise ValueError(f"{path}: layer(s) not in VGG-16: {', '.join(unknown[:10])}")
    sd: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        if name not in layers:
            continue
        conv = name.startswith("conv")
        layer = _layer(layers, name, "Convolution" if conv else "InnerProduct", (2,), path)
        weight = _squeeze(layer.blobs[0], 4 if conv else 2, f"{path}: layer '{name}' weights")
        bias = _squeeze(layer.blobs[1], 1, f"{path}: layer '{name}' bias")
        sd[target + ".weight"] = torch.from_numpy(np.array(weight, np.float32))  # a copy: the file's bytes go
        sd[target + ".bias"] = torch.from_numpy(np.array(bias, np.float32))
    meta = {**CAFFE_VGG_META, "arch": "vgg16", "source": "caffemodel-vgg16",
            "conversion": {"dropped_keys": [], "notes": [] if "fc8" in layers else ["no fc8: classifier not converted"]}}
    if check and "classifier.6.weight" in sd:
        _check_loads_into_classifier(sd, arch="vgg16", style="pytorch", norm="bn", what=path)
    return sd, meta


_MSRA_NAME = re.compile(r"(res|bn|scale)([2-5])([a-z])(\d*)_branch(1|2[abc])")


def _msra_block(letter: str, digits: str) -> int:
    """Detectron's rule (pickle_caffe_blobs.py lines 75-88): ``a`` -> 0, ``b``.. by letter, ``b7`` -> 7."""
    return int(digits) if digits else ord(letter) - ord("a")


def _msra_layer_names(arch: str) -> list[str]:
    """Every weighted layer of the MSRA deploy prototxt of ``arch`` (fc1000 aside): conv1, bn_conv1,
    scale_conv1, then per unit res/bn/scale. ResNet-101/152 name the blocks of conv3_x/conv4_x a, b1, b2, ..."""
    from detres.backbones.convert import _RESNET_LAYOUTS

    blocks = next(b for (b, bottleneck), name in _RESNET_LAYOUTS.items() if name == arch and bottleneck)
    names = ["conv1", "bn_conv1", "scale_conv1"]
    for stage, n in zip(range(2, 6), blocks):
        for i in range(n):
            letter = ("a" if i == 0 else f"b{i}") if arch != "resnet50" and stage in (3, 4) else chr(ord("a") + i)
            for branch in (["1"] if i == 0 else []) + ["2a", "2b", "2c"]:
                names += [f"{p}{stage}{letter}_branch{branch}" for p in ("res", "bn", "scale")]
    return names


def _msra_arch(layers: dict[str, CaffeLayer], path: str) -> str:
    from detres.backbones.convert import _resnet_name

    blocks = [0, 0, 0, 0]
    for name in layers:
        if m := _MSRA_NAME.fullmatch(name):
            stage = int(m.group(2)) - 2
            blocks[stage] = max(blocks[stage], _msra_block(m.group(3), m.group(4)) + 1)
    if not any(blocks):
        raise ValueError(f"{path}: neither py-faster-rcnn's VGG-16 (conv1_1 ...) nor an MSRA ResNet (res2a_branch2a "
                         f"...); its layers with weights: {', '.join(list(layers)[:5]) or 'none'}")
    return _resnet_name(tuple(blocks), True, what=f"{path}: MSRA ResNet layers")


def _fold_bn(bn: CaffeLayer, scale: CaffeLayer, conv_bias: np.ndarray | None, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's BatchNorm (use_global_stats) then Scale as one affine (s, b), in float64 then float32.

    ``mean = blobs[0] / factor``, ``var = blobs[1] / factor`` (factor 0: both 0, as Caffe); a bias of the
    conv before it (none in the MSRA nets but conv1's, which stays a blob) moves the mean by it."""
    where = f"{path}: layer '{bn.name}'"
    mean, var, factor = (_squeeze(np.asarray(b, np.float64), 1, where) for b in bn.blobs)
    if factor.size != 1:
        raise ValueError(f"{where}: the moving-average factor blob has {factor.size} values, expected 1")
    k = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    mean, var = mean * k, var * k
    if conv_bias is not None:
        mean = mean - conv_bias
    gamma = _squeeze(np.asarray(scale.blobs[0], np.float64), 1, f"{path}: layer '{scale.name}'")
    beta = _squeeze(np.asarray(scale.blobs[1], np.float64), 1, f"{path}: layer '{scale.name}'") \
        if len(scale.blobs) > 1 else np.zeros_like(gamma)
    if not mean.shape == var.shape == gamma.shape == beta.shape:
        raise ValueError(f"{where}: mean {mean.shape}, variance {var.shape}, scale {gamma.shape}, shift "
                         f"{beta.shape} differ in length")
    if (var < 0).any():
        raise ValueError(f"{where}: negative variance")
    s = gamma / np.sqrt(var + (CAFFE_BN_EPS if bn.eps is None else bn.eps))
    return s.astype(np.float32), (beta - mean * s).astype(np.float32)


def _msra_blobs(layers: dict[str, CaffeLayer], arch: str, path: str) -> dict[str, np.ndarray]:
    """The Detectron (Caffe2) blobs of an MSRA caffemodel: ``conv1_w``/``_b``, ``res_conv1_bn_s``/``_b``,
    ``res<S>_<i>_branch<..>_w`` and ``_bn_s``/``_bn_b``, ``fc1000_w``/``_b``."""
    names = _msra_layer_names(arch)
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(f"{path}: {arch} layer(s) missing: {', '.join(missing[:10])}"
                         + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    blobs: dict[str, np.ndarray] = {}
    for conv_name in [n for n in names if n.startswith(("res", "conv1"))]:
        conv = _layer(layers, conv_name, "Convolution", (1, 2), path)
        suffix = conv_name[len("res"):] if conv_name != "conv1" else "_conv1"
        bn = _layer(layers, "bn" + suffix, "BatchNorm", (3,), path)
        scale = _layer(layers, "scale" + suffix, "Scale", (1, 2), path)
        if conv_name == "conv1":
            unit, bias = "res_conv1", None
            blobs["conv1_w"] = _squeeze(conv.blobs[0], 4, f"{path}: layer 'conv1'")
            if len(conv.blobs) == 2:
                blobs["conv1_b"] = _squeeze(conv.blobs[1], 1, f"{path}: layer 'conv1' bias")
        else:
            m = _MSRA_NAME.fullmatch(conv_name)
            unit = f"res{m.group(2)}_{_msra_block(m.group(3), m.group(4))}_branch{m.group(5)}"
            blobs[unit + "_w"] = _squeeze(conv.blobs[0], 4, f"{path}: layer '{conv_name}'")
            bias = _squeeze(np.asarray(conv.blobs[1], np.float64), 1, f"{path}: layer '{conv_name}' bias") \
                if len(conv.blobs) == 2 else None
        blobs[unit + "_bn_s"], blobs[unit + "_bn_b"] = _fold_bn(bn, scale, bias, path)
    if "fc1000" in layers:
        fc = _layer(layers, "fc1000", "InnerProduct", (2,), path)
        blobs["fc1000_w"] = _squeeze(fc.blobs[0], 2, f"{path}: layer 'fc1000'")
        blobs["fc1000_b"] = _squeeze(fc.blobs[1], 1, f"{path}: layer 'fc1000' bias")
    return blobs


def _weighted_layers(path: str) -> dict[str, CaffeLayer]:
    layers: dict[str, CaffeLayer] = {}
    for layer in read_caffemodel(path):
        if not layer.blobs:
            continue  # data, ReLU, pooling, softmax ...: nothing to convert
        if layer.name in layers:
            raise ValueError(f"{path}: two layers named '{layer.name}' carry weights")
        layers[layer.name] = layer
    return layers


def convert_caffemodel(
    path: str | os.PathLike, *, arch: str | None = None, check: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert py-faster-rcnn's Caffe VGG-16 or an MSRA ResNet-50/101/152 ``.caffemodel`` (module docstring).

    Args:
        path: the ``.caffemodel`` (new-style ``layer`` or legacy V1 ``layers``; packed or unpacked data).
        arch: ``"vgg16"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``; inferred from the layer names
            when None (``conv1_1`` -> VGG-16; ``res*_branch*`` block counts -> the ResNet), checked when given.
        check: load the result with strict keys into ``build_classifier(arch)`` (when the file has its
            classifier, ``fc8`` / ``fc1000``).

    Returns:
        (state_dict in torchvision's names, meta): ``CAFFE_VGG_META`` or ``MSRA_META`` (BN folded, eps 0) plus
        ``arch``, ``source`` and ``conversion`` (notes). ValueError names the file and the layer (or offset).
    """
    from detres.backbones.convert import convert_caffe2_resnet

    path = os.fspath(path)
    layers = _weighted_layers(path)
    inferred = "vgg16" if "conv1_1" in layers else _msra_arch(layers, path)
    if arch is not None and arch != inferred:
        raise ValueError(f"{path}: --arch {arch} given, but the layers describe a {inferred}")
    if inferred == "vgg16":
        return _convert_vgg(layers, path, check)
    names = set(_msra_layer_names(inferred)) | {"fc1000"}
    unknown = sorted(n for n in layers if n not in names)
    if unknown:
        raise ValueError(f"{path}: layer(s) not in the MSRA {inferred}: {', '.join(unknown[:10])}")
    blobs = _msra_blobs(layers, inferred, path)
    try:
        sd, meta = convert_caffe2_resnet(blobs, arch=inferred, check=check)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    meta["source"] = "msra-caffemodel"
    eps = sorted({CAFFE_BN_EPS if layer.eps is None else layer.eps for layer in layers.values() if layer.type == "BatchNorm"})
    meta["conversion"]["notes"].append(f"BatchNorm + Scale folded into the affine (running statistics divided by "
                                       f"the moving-average factor; eps {', '.join(f'{e:g}' for e in eps)})")
    return sd, meta
