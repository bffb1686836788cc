"""Bring ImageNet and detector weights from other code bases into detres state dicts.

Caffe's own ``.caffemodel`` files (the paper's VGG-16 and MSRA ResNets) are read by
:mod:`detres.backbones.caffe` (``convert_weights`` hands them there). Three more sources are understood, each
turned into ``{"model": state_dict, "meta": meta}`` (the file format that
:func:`detres.backbones.read_weights` reads):

* **torchvision** ImageNet checkpoints (``resnet50-*.pth``, "pytorch" style: stride in the 3x3 conv).
  The keys are already ours; the file is only checked: the state dict must load with strict keys into
  ``build_classifier(arch)``, with the arch taken from ``arch=`` or inferred from the keys and shapes.
* **MSRA / Detectron** ResNet-50/101/152 (``R-50.pkl``): the original Caffe weights of the paper, as a
  pickled dict of numpy arrays with Caffe2 names (``conv1_w``, ``res_conv1_bn_s``,
  ``res2_0_branch2a_w``, ``res2_0_branch1_w``, ``pred_w`` ...). These networks put the stride of a
  down-sampling bottleneck in its first 1x1 conv ("msra" style), expect BGR input in 0..255 minus
  Detectron's pixel means, and store BatchNorm as a folded affine (scale ``_s``, shift ``_b``). The
  converter maps the names to torchvision's, writes the affine into FrozenBN parameters with running
  mean 0 / variance 1 (or the stored running statistics, when the file has them) and records
  ``MSRA_META`` (style msra, BGR, 255, Detectron means, std 1, bn_eps 0.0) so that the detector picks
  the matching normalisation by itself.
* **detectron2** model-zoo R50-C4 / R101-C4 Faster R-CNN checkpoints (``model_final_*.pkl`` with
  ``{"model": {name: ndarray}, "__author__": ...}`` or a ``.pth``): converted into the state dict of
  ``detres.modeling.build_detector(detectron2_c4_spec(arch), K + 1)`` (:mod:`detres.modeling.convert`). See
  :func:`convert_detectron2_c4` for the layout differences that are reconciled.

Pickles are read with :class:`SafeUnpickler`, which admits only numpy arrays, numbers, strings and
containers and never calls anything else named in the file.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from detres.backbones.caffe import is_caffemodel
from detres.utils.io import SafeUnpickler, UnsafePickleError, atomic_write, safe_load_pickle

__all__ = [
    "UnsafePickleError",
    "SafeUnpickler",
    "safe_load_pickle",
    "load_source",
    "detect_format",
    "infer_resnet_arch",
    "convert_torchvision",
    "convert_caffe2_resnet",
    "convert_detectron2_c4",
    "convert_weights",
    "DETECTRON2_PIXEL_MEAN",
    "D2_BOX_HEAD_PREFIX",
]

def load_source(path: str | os.PathLike) -> Any:
    """Read a weights file of any supported kind without running code from it.

    torch zip files (and legacy torch files) go through ``torch.load(weights_only=True)``; anything
    else through :func:`safe_load_pickle`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure is a bad file; say which
            raise ValueError(f"{path}: not a loadable torch checkpoint ({type(e).__name__}: {e})") from None
    try:
        obj = safe_load_pickle(path)
    except ValueError as e:
        # A legacy (pre-zip) torch file names torch globals; torch's own restricted loader reads it.
        if "refusing to load global 'torch." not in str(e):
            raise
        obj = None
    if obj is None or not isinstance(obj, Mapping):
        # Legacy torch files start with a magic-number pickle (an int), then the real payload.
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: not a weights file ({type(e).__name__}: {e})") from None
    return obj


# ----------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------

_CAFFE2_STEM_KEYS = ("conv1_w", "res_conv1_bn_s")


def _unwrap(obj: Any, *, path: str = "<weights>") -> tuple[Mapping[str, Any], dict | None]:
    """Return (flat name -> array dict, detres meta or None) from a loaded weights object."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    meta = None
    if "blobs" in obj and isinstance(obj["blobs"], Mapping):
        return obj["blobs"], None
    if "model" in obj and isinstance(obj["model"], Mapping):
        meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else None
        return obj["model"], meta
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return obj["state_dict"], None
    return obj, None


def detect_format(weights: Mapping[str, Any]) -> str:
    """Name the layout of a flat weights dict: ``"caffe2"``, ``"detectron2"`` or ``"torchvision"``."""
    keys = [k for k in weights if isinstance(k, str)]
    if any(k in weights for k in _CAFFE2_STEM_KEYS) or any(re.match(r"res\d_\d+_branch", k) for k in keys):
        return "caffe2"
    if any(k.startswith(("backbone.res", "backbone.stem.", "proposal_generator.", "roi_heads.res5.")) for k in keys):
        return "detectron2"
    if any(k.startswith(("conv1.", "layer1.", "features.", "fc.", "classifier.")) for k in keys):
        return "torchvision"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(f"unrecognised weights layout (first keys: {sample})")


def _to_tensor(value: Any, *, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":  # object, string, complex, void...: not weights
            raise ValueError(f"key '{key}': expected an array of numbers, found dtype {value.dtype} "
                             f"(shape {value.shape})")
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"key '{key}': holds NaN or infinite values")
        return torch.tensor(np.ascontiguousarray(value))
    raise ValueError(f"key '{key}': expected an array, found {type(value).__name__}")


# ----------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------

_RESNET_LAYOUTS: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def _resnet_name(blocks: tuple[int, ...], bottleneck: bool, *, what: str) -> str:
    try:
        return _RESNET_LAYOUTS[(blocks, bottleneck)]
    except KeyError:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(f"{what}: blocks per stage {blocks} ({kind}) match no ResNet of the paper") from None


def infer_resnet_arch(state_dict: Mapping[str, Any]) -> str:
    """Infer the architecture name of a torchvision-named classifier state dict.

    ResNets are told apart by blocks per stage and the presence of ``conv3`` (bottleneck); a state dict
    with ``features.*`` keys is VGG-16 when it has 13 conv layers.
    """
    keys = list(state_dict)
    if any(k.startswith("features.") for k in keys):
        convs = [k for k in keys if k.startswith("features.") and k.endswith(".weight") and state_dict[k].ndim == 4]
        if len(convs) == 13:
            return "vgg16"
        raise ValueError(f"VGG-like state dict with {len(convs)} conv layers; only vgg16 (13) is supported")
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(idx))
    bottleneck = any(re.match(r"layer1\.0\.conv3\.", k) for k in keys)
    return _resnet_name(tuple(blocks), bottleneck, what="torchvision state dict")


def _check_loads_into_classifier(
    state_dict: Mapping[str, torch.Tensor], *, arch: str, style: str, norm: str, what: str
) -> None:
    """Load ``state_dict`` with strict keys into ``build_classifier(arch)``; ValueError on mismatch."""
    from detres.backbones import build_classifier

    head = "fc.weight" if "fc.weight" in state_dict else "classifier.6.weight"
    if head not in state_dict:
        raise ValueError(f"{what}: no classifier layer ('fc.weight' or 'classifier.6.weight')")
    num_classes = int(state_dict[head].shape[0])
    model = build_classifier(arch, num_classes=num_classes, style=style, norm=norm)
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{what}: does not load into {arch} ({norm}): {' '.join(first[:3])[:500]}") from None


# ----------------------------------------------------------------------------------------------
# torchvision: identity, checked
# ----------------------------------------------------------------------------------------------


def convert_torchvision(
    weights: Mapping[str, Any], *, arch: str | None = None, meta: Mapping[str, Any] | None = None, check: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check a torchvision-named classifier state dict and attach metadata.

    Args:
        weights: name -> tensor/array, torchvision names (``conv1.weight`` ... ``fc.bias``).
        arch: ``"resnet50"`` etc.; inferred from the keys when None.
        meta: metadata already in the file (a detres file); when None, torchvision's defaults.
        check: load into ``build_classifier(arch)`` with strict keys (ValueError if it does not fit).

    Returns:
        (state_dict, meta) with meta = ``TORCHVISION_META`` (or the file's meta) plus ``arch``.
    """
    from detres.backbones.weights import TORCHVISION_META

    sd = {k: _to_tensor(v, key=k) for k, v in weights.items()}
    arch = arch or (meta or {}).get("arch") or infer_resnet_arch(sd)
    out_meta = dict(meta) if meta else dict(TORCHVISION_META)
    out_meta["arch"] = arch
    if check:
        # norm "bn": torchvision checkpoints carry running statistics (VGG-16 has no norm layers at all)
        _check_loads_into_classifier(
            sd, arch=arch, style=str(out_meta.get("style", "pytorch")), norm="bn", what="torchvision checkpoint"
        )
    return sd, out_meta


# ----------------------------------------------------------------------------------------------
# MSRA / Detectron (Caffe2 names)
# ----------------------------------------------------------------------------------------------

#: Caffe2 blobs that carry no weights (solver bookkeeping) and are skipped.
_CAFFE2_BOOKKEEPING = frozenset({"model_iter", "lr", "iter", "epoch"})
_BRANCH2 = {"a": 1, "b": 2, "c": 3}
_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


#: The classifier under its names in the MSRA ImageNet files (``fc1000_*``) and in other Detectron files
#: (``pred_*``).
_CAFFE2_FC = {"fc1000_w": "fc.weight", "fc1000_b": "fc.bias", "pred_w": "fc.weight", "pred_b": "fc.bias"}
#: The stem conv's bias (Caffe convs have one; torchvision's conv1 has none): folded into bn1.
_CONV1_BIAS = "conv1_b"


def _caffe2_target(key: str) -> str | None:
    """torchvision name for one Caffe2 blob name; None for solver bookkeeping; ValueError if unknown.
    ``conv1_b`` maps to ``conv1.bias``, which :func:`convert_caffe2_resnet` folds into bn1."""
    if key in _CAFFE2_BOOKKEEPING or key.endswith("_momentum"):
        return None
    if key == "conv1_w":
        return "conv1.weight"
    if key == _CONV1_BIAS:
        return "conv1.bias"
    if m := re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", key):
        return f"bn1.{_BN_SUFFIX[m.group(1)]}"
    if key in _CAFFE2_FC:
        return _CAFFE2_FC[key]
    m = re.fullmatch(r"res([2-5])_(\d+)_branch(1|2[abc])(_w|_bn_s|_bn_b|_bn_rm|_bn_riv)", key)
    if m is None:
        raise ValueError(f"key '{key}': not a Caffe2 ResNet blob (expected conv1_w, conv1_b, res_conv1_bn_*, "
                         "res<2-5>_<i>_branch<1|2a|2b|2c>_{w,bn_s,bn_b}, fc1000_w/_b or pred_w/_b)")
    stage, block, branch, what = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    prefix = f"layer{stage - 1}.{block}."
    if branch == "1":
        prefix += "downsample.0." if what == "_w" else "downsample.1."
    else:
        k = _BRANCH2[branch[1]]
        prefix += f"conv{k}." if what == "_w" else f"bn{k}."
    return prefix + ("weight" if what == "_w" else _BN_SUFFIX[what[4:]])


def _caffe2_bn_statistics(sd: dict[str, torch.Tensor]) -> list[str]:
    """In place: running mean 0 / variance 1 for every BN that has an affine but no stored statistics, and
    Caffe's ``conv1.bias`` folded into ``bn1.running_mean`` (removed from ``sd``). Returns the notes."""
    notes: list[str] = []
    conv1_bias = sd.pop("conv1.bias", None)
    for key in [k for k in sd if k.endswith(".weight") and (k.startswith("bn1") or ".bn" in k or "downsample.1" in k)]:
        base = key[: -len("weight")]
        if base + "bias" not in sd:
            raise ValueError(f"BN '{base[:-1]}': has a scale (_bn_s) but no shift (_bn_b)")
        n = sd[key].shape[0]
        sd.setdefault(base + "running_mean", torch.zeros(n))
        sd.setdefault(base + "running_var", torch.ones(n))
    if conv1_bias is not None:
        if conv1_bias.shape != sd["bn1.running_mean"].shape:
            raise ValueError(f"key 'conv1_b': shape {tuple(conv1_bias.shape)} does not match conv1's "
                             f"{sd['bn1.running_mean'].shape[0]} channels")
        if bool((conv1_bias == 0).all()):
            notes.append("conv1_b is all zeros: nothing to fold")
        else:
            sd["bn1.running_mean"] = sd["bn1.running_mean"] - conv1_bias
            notes.append("conv1_b folded into bn1.running_mean (exact: bn(Wx + c) with mean m == bn(Wx) with mean m - c)")
    return notes


def convert_caffe2_resnet(
    blobs: Mapping[str, Any], *, arch: str | None = None, check: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert MSRA ResNet blobs (Detectron ``R-50.pkl`` layout) into a torchvision-named state dict.

    Name mapping (n = stage 2..5 -> ``layer{n-1}``, i = block):
    ``conv1_w`` -> ``conv1.weight``; ``res_conv1_bn_{s,b}`` -> ``bn1.{weight,bias}``;
    ``res{n}_{i}_branch2{a,b,c}_w`` -> ``layer{n-1}.{i}.conv{1,2,3}.weight``;
    ``res{n}_{i}_branch2{a,b,c}_bn_{s,b}`` -> ``layer{n-1}.{i}.bn{1,2,3}.{weight,bias}``;
    ``res{n}_{i}_branch1_w`` / ``_bn_{s,b}`` -> ``layer{n-1}.{i}.downsample.{0,1}.*``;
    ``fc1000_w`` / ``fc1000_b`` (the MSRA ImageNet files) or ``pred_w`` / ``pred_b`` -> ``fc.weight`` /
    ``fc.bias``. The top-level dict may hold the blobs or ``{"blobs": {...}}``.
    ``conv1_b``: Caffe's stem conv has a bias; torchvision's ``conv1`` has none, and bn1 follows it. A
    bias ``c`` before a BN with running mean ``m`` gives ``(W x + c - m) * s / sqrt(v + eps) + t``, i.e.
    the BN with running mean ``m - c``: the bias is folded there exactly (and reported if it is zero).
    BatchNorm: ``_s``/``_b`` are the folded affine, so running mean 0 and running variance 1 are
    written unless ``_bn_rm``/``_bn_riv`` are present (taken as mean and variance, as detectron2
    does). ``*_momentum`` and ``model_iter``/``lr`` are skipped; any other key is an error.
    Conv weights are OIHW and FC weights (out, in) in both frameworks, so values are copied as they are.
    The 1x1-stride convention ("msra") is a property of the model, recorded in the meta.

    Returns:
        (state_dict, meta) with meta = ``MSRA_META`` + ``arch`` (FrozenBN keys: no num_batches_tracked) and
        ``meta["conversion"] = {"dropped_keys": [...], "notes": [...]}``: every source key is used or named.
    """
    from detres.backbones.weights import MSRA_META

    sd: dict[str, torch.Tensor] = {}
    dropped, notes = [], []
    for key, value in blobs.items():
        if not isinstance(key, str):
            raise ValueError(f"key {key!r}: blob names must be strings")
        target = _caffe2_target(key)
        if target is None:
            dropped.append(key)
            continue
        if target in sd:
            raise ValueError(f"key '{key}': maps to '{target}', which another blob already filled")
        sd[target] = _to_tensor(value, key=key).float()
    if "conv1.weight" not in sd:
        raise ValueError("no 'conv1_w' blob: not an MSRA ResNet")
    notes += _caffe2_bn_statistics(sd)
    blocks = []
    for stage in range(1, 5):
        blocks.append(len({int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}))
    bottleneck = "layer1.0.conv3.weight" in sd
    inferred = _resnet_name(tuple(blocks), bottleneck, what="Caffe2 ResNet")
    if arch is not None and arch != inferred:
        raise ValueError(f"--arch {arch} given, but the blobs describe a {inferred}")
    meta = dict(MSRA_META)
    meta.update({"arch": inferred, "style": "msra", "bn_eps": 0.0, "source": "msra-caffe2",
                 "conversion": {"dropped_keys": sorted(dropped), "notes": notes}})
    if check and "fc.weight" in sd:
        _check_loads_into_classifier(sd, arch=inferred, style="msra", norm="frozen_bn", what="MSRA blobs")
    return dict(sorted(sd.items(), key=lambda kv: _natural_key(kv[0]))), meta


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# ----------------------------------------------------------------------------------------------
# detectron2 R-C4 detectors
# ----------------------------------------------------------------------------------------------

#: detectron2's pixel mean for MSRA-initialised models (BGR, 0..255); std is 1.
DETECTRON2_PIXEL_MEAN = [103.530, 116.280, 123.675]

#: Where build_detector keeps the res5 stage (torchvision ``layer4`` names) in the RoI head.
D2_BOX_HEAD_PREFIX = "roi_heads.box_head."
#: Where build_detector keeps the trunk (conv1 ... layer3).
D2_TRUNK_PREFIX = "backbone."
#: torchvision RPNHead names.
D2_RPN_PREFIX = "rpn.head."

_D2_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _d2_resnet_name(rest: str, *, key: str) -> str:
    """Map a detectron2 ResNet block suffix ``{i}.conv1.norm.weight`` to torchvision's ``{i}.bn1.weight``."""
    m = re.fullmatch(r"(\d+)\.(conv[123]|shortcut)(\.norm)?\.(weight|bias|running_mean|running_var)", rest)
    if m is None:
        raise ValueError(f"key '{key}': not a detectron2 ResNet block parameter")
    block, layer, norm, param = m.groups()
    if layer == "shortcut":
        mod = "downsample.1" if norm else "downsample.0"
    else:
        mod = f"bn{layer[-1]}" if norm else layer
    if not norm and param != "weight":
        raise ValueError(f"key '{key}': detectron2 ResNet convs have no {param}")
    return f"{block}.{mod}.{param}"


def _anchor_permutation(num_sizes: int, num_ratios: int) -> torch.Tensor:
    """Index ``p`` with ``torchvision_anchor[j] = detectron2_anchor[p[j]]``.

    detectron2 enumerates a location's anchors size-major (``for size: for ratio``), torchvision's
    AnchorGenerator ratio-major (``for ratio: for size``). Both define the ratio as h / w.
    """
    perm = [s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)]
    return torch.tensor(perm, dtype=torch.long)


def _d2_split(weights: Mapping[str, Any]) -> tuple[dict, dict, dict, dict]:
    """detectron2's keys -> (trunk and res5 under detres's names, RPN head, box predictor, pixel mean/std)."""
    sd: dict[str, torch.Tensor] = {}
    pixel = {"pixel_mean": list(DETECTRON2_PIXEL_MEAN), "pixel_std": [1.0, 1.0, 1.0]}
    rpn: dict[str, torch.Tensor] = {}
    predictor: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(key, str):
            raise ValueError(f"key {key!r}: parameter names must be strings")
        if key in ("pixel_mean", "pixel_std"):
            array = value if not isinstance(value, torch.Tensor) else value.numpy()
            pixel[key] = [float(v) for v in np.asarray(array).reshape(-1)]
            continue
        if key.endswith("num_batches_tracked"):
            continue
        t = _to_tensor(value, key=key).float()
        if key.startswith("backbone.stem.conv1."):
            rest = key[len("backbone.stem.conv1."):]
            if rest == "weight":
                sd[D2_TRUNK_PREFIX + "conv1.weight"] = t
            elif rest.startswith("norm.") and rest[5:] in _D2_BN_PARAMS:
                sd[D2_TRUNK_PREFIX + "bn1." + rest[5:]] = t
            else:
                raise ValueError(f"key '{key}': unexpected stem parameter")
        elif m := re.match(r"backbone\.res([2-4])\.(.*)", key):
            sd[f"{D2_TRUNK_PREFIX}layer{int(m.group(1)) - 1}.{_d2_resnet_name(m.group(2), key=key)}"] = t
        elif m := re.match(r"roi_heads\.res5\.(.*)", key):
            sd[f"{D2_BOX_HEAD_PREFIX}layer4.{_d2_resnet_name(m.group(1), key=key)}"] = t
        elif m := re.fullmatch(r"proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)", key):
            rpn[f"{m.group(1)}.{m.group(2)}"] = t
        elif m := re.fullmatch(r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)", key):
            predictor[f"{m.group(1)}.{m.group(2)}"] = t
        else:
            raise ValueError(f"key '{key}': not part of a detectron2 R-C4 Faster R-CNN")
    return sd, rpn, predictor, pixel


def _d2_rpn(rpn: dict[str, torch.Tensor], num_anchor_sizes: int, num_aspect_ratios: int) -> dict[str, torch.Tensor]:
    """RPN: one 3x3 conv, then objectness (A) and deltas (A*4), anchors permuted to torchvision's order."""
    num_anchors = rpn["objectness_logits.weight"].shape[0]
    if num_anchors != num_anchor_sizes * num_aspect_ratios:
        raise ValueError(f"RPN predicts {num_anchors} anchors per location, expected "
                         f"{num_anchor_sizes} sizes x {num_aspect_ratios} ratios")
    perm = _anchor_permutation(num_anchor_sizes, num_aspect_ratios)
    delta_perm = (perm[:, None] * 4 + torch.arange(4)[None, :]).reshape(-1)
    return {
        D2_RPN_PREFIX + "conv.0.0.weight": rpn["conv.weight"],
        D2_RPN_PREFIX + "conv.0.0.bias": rpn["conv.bias"],
        D2_RPN_PREFIX + "cls_logits.weight": rpn["objectness_logits.weight"][perm].contiguous(),
        D2_RPN_PREFIX + "cls_logits.bias": rpn["objectness_logits.bias"][perm].contiguous(),
        D2_RPN_PREFIX + "bbox_pred.weight": rpn["anchor_deltas.weight"][delta_perm].contiguous(),
        D2_RPN_PREFIX + "bbox_pred.bias": rpn["anchor_deltas.bias"][delta_perm].contiguous(),
    }


def _d2_predictor(predictor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Box predictor: background last -> first; class-specific K*4 -> (K+1)*4 with a zero background."""
    cls_w, cls_b = predictor["cls_score.weight"], predictor["cls_score.bias"]
    num_classes = cls_w.shape[0]  # K + 1
    order = torch.tensor([num_classes - 1] + list(range(num_classes - 1)))
    box_w, box_b = predictor["bbox_pred.weight"], predictor["bbox_pred.bias"]
    if box_w.shape[0] == 4:  # class-agnostic regression
        box_w, box_b = box_w.repeat(num_classes, 1), box_b.repeat(num_classes)
    elif box_w.shape[0] == 4 * (num_classes - 1):
        box_w = torch.cat([box_w.new_zeros(4, box_w.shape[1]), box_w])
        box_b = torch.cat([box_b.new_zeros(4), box_b])
    else:
        raise ValueError(f"bbox_pred has {box_w.shape[0]} outputs; expected 4 or 4*K = {4 * (num_classes - 1)}")
    return {"roi_heads.box_predictor.cls_score.weight": cls_w[order].contiguous(),
            "roi_heads.box_predictor.cls_score.bias": cls_b[order].contiguous(),
            "roi_heads.box_predictor.bbox_pred.weight": box_w.contiguous(),
            "roi_heads.box_predictor.bbox_pred.bias": box_b.contiguous()}


def convert_detectron2_c4(
    weights: Mapping[str, Any],
    *,
    arch: str | None = None,
    num_anchor_sizes: int = 5,
    num_aspect_ratios: int = 3,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert a detectron2 R50-C4 / R101-C4 Faster R-CNN state dict into detres's C4 detector.

    Target: ``build_detector(detectron2_c4_spec(arch), K + 1)`` (detres.modeling.convert; torchvision
    FasterRCNN): ``backbone.`` = trunk (conv1, bn1, layer1..layer3), ``rpn.head.`` = RPNHead,
    ``roi_heads.box_head.layer4.`` = res5, ``roi_heads.box_predictor.{cls_score,bbox_pred}``.

    Reconciled differences:
      * names: ``stem.conv1`` -> ``conv1``/``bn1``; ``res{n}.{i}.conv{k}[.norm]`` -> ``layer{n-1}.{i}.conv{k}``
        / ``bn{k}``; ``shortcut[.norm]`` -> ``downsample.{0,1}``; ``roi_heads.res5`` -> the box head.
      * classes: detectron2's ``cls_score`` has K + 1 outputs with background LAST; torchvision's
        has background at index 0. ``bbox_pred`` is class-specific K*4 (no background row) in
        detectron2 and (K+1)*4 in torchvision: a zero background block is put first. A class-agnostic
        (4-output) regressor is repeated for all K + 1 classes.
      * anchors: detectron2 orders a location's A = sizes x ratios anchors size-major, torchvision
        ratio-major: the RPN objectness channels (A) and delta channels (A x 4, anchor-major) are permuted.
      * ``pixel_mean``/``pixel_std`` buffers (when present) go to the meta, not the state dict.

    Returns:
        (state_dict, meta): meta = MSRA style, BGR, 255, detectron2 means (or the file's), std 1,
        bn_eps 1e-5 (detectron2's FrozenBatchNorm2d), ``arch``, and ``meta["detector"]`` =
        ``{"recipe": "detectron2_c4", "backbone": arch, "num_classes": K + 1}``: what
        :func:`detres.modeling.convert.build_converted_detector` needs to build the matching detector
        (its settings are :func:`detres.modeling.convert.detectron2_c4_spec`).
    """
    from detres.backbones.weights import MSRA_META

    sd, rpn, predictor, pixel = _d2_split(weights)
    missing = [k for k in ("conv.weight", "conv.bias", "objectness_logits.weight", "objectness_logits.bias",
                           "anchor_deltas.weight", "anchor_deltas.bias") if k not in rpn]
    missing += [k for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias") if k not in predictor]
    if missing or D2_TRUNK_PREFIX + "conv1.weight" not in sd:
        raise ValueError(f"detectron2 checkpoint is missing {missing or ['backbone.stem.conv1.weight']}: not an R-C4 detector")
    sd.update(_d2_rpn(rpn, num_anchor_sizes, num_aspect_ratios))
    num_classes = predictor["cls_score.weight"].shape[0]  # K + 1
    sd.update(_d2_predictor(predictor))

    blocks = []
    for stage in range(1, 4):
        blocks.append(len({int(m.group(1)) for k in sd if (m := re.match(rf"{D2_TRUNK_PREFIX}layer{stage}\.(\d+)\.", k))}))
    blocks.append(len({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(D2_BOX_HEAD_PREFIX)}layer4\.(\d+)\.", k))}))
    inferred = _resnet_name(tuple(blocks), True, what="detectron2 checkpoint")
    if arch is not None and arch != inferred:
        raise ValueError(f"--arch {arch} given, but the checkpoint holds a {inferred}")
    meta = dict(MSRA_META)
    meta.update({
        "arch": inferred, "style": "msra", "channel_order": "BGR", "input_range": 255.0,
        "mean": pixel["pixel_mean"], "std": pixel["pixel_std"], "bn_eps": 1e-5, "source": "detectron2",
        # what the file is; the detector's settings for it live in detres.modeling.convert (its spec)
        "detector": {"recipe": "detectron2_c4", "backbone": inferred, "num_classes": int(num_classes)},
    })
    return sd, meta


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def convert_weights(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, *, arch: str | None = None,
    fmt: str = "auto", check: bool = True, preprocess: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Convert the weights file ``src`` and (when ``dst`` is given) write ``{"model", "meta"}`` there.

    Args:
        src: torchvision ``.pth``, MSRA/Detectron ``.pkl``, detectron2 ``.pkl``/``.pth``, or a Caffe
            ``.caffemodel`` (py-faster-rcnn's VGG-16, the MSRA ResNets: :mod:`detres.backbones.caffe`).
        dst: output ``.pth``; written atomically (temporary file, then ``os.replace``).
        arch: ``"resnet50"`` ...; inferred when None, checked when given.
        fmt: ``"auto"``, ``"torchvision"``, ``"caffe2"``, ``"detectron2"`` or ``"caffemodel"`` (auto: by the
            ``.caffemodel`` suffix or a NetParameter's first bytes, else by the keys).
        check: for classifier weights, load into ``build_classifier(arch)`` with strict keys.
        preprocess: the input a torchvision-layout file expects: ``"torchvision"`` (RGB, [0, 1], ImageNet
            mean/std; the default for torchvision files) or ``"caffe"`` (BGR, [0, 255], py-faster-rcnn's pixel
            means: the Caffe VGG-16 converted to torchvision's layout, ``vgg16_caffe.pth``). MSRA files carry
            the Caffe preprocessing already ("caffe" is accepted, "torchvision" refused); detectron2 files
            carry their own.

    Returns:
        (state_dict, meta, fmt) with the format that was used.
    """
    from detres.backbones.weights import PREPROCESSING

    src = Path(src)
    if preprocess is not None and preprocess not in PREPROCESSING:
        raise ValueError(f"--preprocess: unknown {preprocess!r}; choose from {list(PREPROCESSING)}")
    if fmt == "caffemodel" or (fmt == "auto" and is_caffemodel(src)):
        sd, meta = _convert_caffemodel_file(src, arch=arch, check=check, preprocess=preprocess)
        fmt = "caffemodel"
    else:
        sd, meta, fmt = _convert_pickled(src, arch=arch, fmt=fmt, check=check, preprocess=preprocess)
    if dst is not None:
        atomic_write(dst, lambda f: torch.save({"model": sd, "meta": meta}, f), binary=True)
    return sd, meta, fmt


def _convert_caffemodel_file(src: Path, *, arch: str | None, check: bool, preprocess: str | None
                             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``.caffemodel`` (detres.backbones.caffe): its preprocessing is Caffe's, recorded by the conversion."""
    from detres.backbones.caffe import convert_caffemodel

    if preprocess not in (None, "caffe"):
        raise ValueError(f"{src}: --preprocess {preprocess}: the Caffe models expect Caffe's input (BGR, 0-255, "
                         "pixel means), which their conversion records")
    return convert_caffemodel(src, arch=arch, check=check)


def _convert_pickled(src: Path, *, arch: str | None, fmt: str, check: bool, preprocess: str | None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """torch / pickle files: torchvision, Caffe2 (MSRA / Detectron) and detectron2 layouts."""
    from detres.backbones.weights import PREPROCESSING

    obj = load_source(src)
    weights, file_meta = _unwrap(obj, path=str(src))
    try:
        fmt = detect_format(weights) if fmt == "auto" else fmt
        if fmt == "torchvision":
            if preprocess is not None and file_meta is not None:
                raise ValueError(f"--preprocess {preprocess}: this detres file already records its preprocessing "
                                 f"({file_meta.get('channel_order')}, x{file_meta.get('input_range')}); convert "
                                 "the original file instead")
            chosen = dict(PREPROCESSING[preprocess]) if preprocess is not None else file_meta
            sd, meta = convert_torchvision(weights, arch=arch, meta=chosen, check=check)
        elif fmt == "caffe2":
            if preprocess not in (None, "caffe"):
                raise ValueError(f"--preprocess {preprocess}: MSRA/Detectron ResNets expect Caffe's input "
                                 "(BGR, 0-255, pixel means), which their conversion records")
            sd, meta = convert_caffe2_resnet(weights, arch=arch, check=check)
        elif fmt == "detectron2":
            if preprocess is not None:
                raise ValueError(f"--preprocess {preprocess}: a detectron2 detector records its own preprocessing")
            sd, meta = convert_detectron2_c4(weights, arch=arch)
        else:
            raise ValueError(f"unknown format '{fmt}' (auto, torchvision, caffe2, detectron2, caffemodel)")
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    return sd, meta, fmt
