"""ImageNet weights by name: ``torchvision:resnet101``, ``msra:R-101``, ``caffe:vgg16`` (:func:`list_weights`).

A name resolves to a local detres weights file (what :func:`detres.backbones.read_weights` reads): the
publisher's file is downloaded once into the cache (``$DETRES_CACHE``, default ``torch.hub.get_dir()/detres``;
``<cache>/<source>/<file name>``) through :func:`detres.utils.download.download` (one process per machine, the
others wait; checked; atomic), and a file in another format is converted once into
``<cache>/<source>/<stem>.detres.pth`` beside it, ``{"model": state_dict, "meta": meta}`` written atomically,
the meta saying the preprocessing the weights expect. ``$DETRES_MIRROR`` redirects every download.

The table: each entry is its publisher's URL, the checksum that publisher gives (see ``checksum_note``) and the
file and line where both are published. Where nothing is published nothing is pinned: those files are taken as
they come and their SHA-256 is logged.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from detres.utils.download import cache_dir, download, extract, file_lock
from detres.utils.io import atomic_write

__all__ = ["WeightsSource", "WEIGHTS", "CONVERTERS", "PAPER_WEIGHTS", "list_weights", "is_weights_name",
           "weights_path", "suggest_weights"]

_TV = "https://download.pytorch.org/models/"
_TV_NOTE = ("torchvision publishes the first 8 hex digits of the file's SHA-256 in its name and checks that prefix "
            "(torch/hub.py of torch 2.14.1: HASH_REGEX, and download_url_to_file's hash_prefix check); no full hash is published")
_DETECTRON = "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/"
_DETECTRON_NOTE = ("Detectron publishes each file's MD5 at <url>.md5sum (Detectron MODEL_ZOO.md l.18), read at "
                   "download time; no hash is pinned here")


@dataclass(frozen=True)
class WeightsSource:
    """One named weights file. ``fmt``: ``torchvision`` (a state dict, used as it is), ``caffe2`` (Detectron's
    pkl, converted by :func:`detres.backbones.convert.convert_weights`) or ``caffemodel`` (a Caffe binary
    protobuf, converted by ``detres.backbones.caffe.convert_caffemodel``); ``member``: the file's name inside
    the downloaded archive; ``checksum``: ``"<algorithm>:<hex>"`` (utils/download.py) or None;
    ``checksum_url``: where the publisher keeps the MD5 instead; ``cite``: where URL and checksum come from."""
    url: str
    fmt: str
    arch: str
    cite: str
    checksum: Optional[str] = None
    checksum_url: Optional[str] = None
    checksum_note: str = ""
    member: Optional[str] = None


def _tv(file: str, arch: str, line: int, enum: str) -> WeightsSource:
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", file).group(1)
    module = "vgg" if arch.startswith("vgg") else "resnet"
    return WeightsSource(url=_TV + file, fmt="torchvision", arch=arch, checksum=f"sha256-prefix:{prefix}",
                         checksum_note=_TV_NOTE, cite=f"torchvision 0.29 models/{module}.py l.{line} ({enum})")


def _msra(name: str, arch: str, line: int) -> WeightsSource:
    return WeightsSource(url=_DETECTRON + f"{name}.pkl", fmt="caffe2", arch=arch, checksum_url=_DETECTRON + f"{name}.pkl.md5sum",
                         checksum_note=_DETECTRON_NOTE, cite=f"Detectron MODEL_ZOO.md l.{line}; detectron2 "
                         "checkpoint/catalog.py C2_IMAGENET_MODELS 'MSRA/" + name + "'")


#: name -> source. torchvision ``resnetNN`` are its IMAGENET1K_V1 files (the original torch/pytorch training),
#: ``resnetNN_v2`` the IMAGENET1K_V2 ones. MSRA: Detectron's copies of the paper's Caffe ResNets (BN folded,
#: BGR 0-255); Detectron distributes R-50 and R-101 only (MODEL_ZOO.md l.40-41: no R-152.pkl, so no
#: ``msra:R-152``). ``caffe:vgg16``: the Caffe VGG-16 the Faster R-CNN paper fine-tuned, as py-faster-rcnn's
#: data/scripts/fetch_imagenet_models.sh gets it (l.6-8: imagenet_models.tgz, its URL and MD5) and
#: experiments/scripts/faster_rcnn_end2end.sh l.53 uses it (data/imagenet_models/VGG16.v2.caffemodel).
WEIGHTS: dict[str, WeightsSource] = {
    "torchvision:resnet18": _tv("resnet18-f37072fd.pth", "resnet18", 314, "ResNet18_Weights.IMAGENET1K_V1"),
    "torchvision:resnet34": _tv("resnet34-b627a593.pth", "resnet34", 336, "ResNet34_Weights.IMAGENET1K_V1"),
    "torchvision:resnet50": _tv("resnet50-0676ba61.pth", "resnet50", 358, "ResNet50_Weights.IMAGENET1K_V1"),
    "torchvision:resnet50_v2": _tv("resnet50-11ad3fa6.pth", "resnet50", 376, "ResNet50_Weights.IMAGENET1K_V2"),
    "torchvision:resnet101": _tv("resnet101-63fe2227.pth", "resnet101", 401, "ResNet101_Weights.IMAGENET1K_V1"),
    "torchvision:resnet101_v2": _tv("resnet101-cd907fc2.pth", "resnet101", 419, "ResNet101_Weights.IMAGENET1K_V2"),
    "torchvision:resnet152": _tv("resnet152-394f9c45.pth", "resnet152", 444, "ResNet152_Weights.IMAGENET1K_V1"),
    "torchvision:resnet152_v2": _tv("resnet152-f82ba261.pth", "resnet152", 462, "ResNet152_Weights.IMAGENET1K_V2"),
    "torchvision:vgg16": _tv("vgg16-397923af.pth", "vgg16", 199, "VGG16_Weights.IMAGENET1K_V1"),
    "msra:R-50": _msra("R-50", "resnet50", 40),
    "msra:R-101": _msra("R-101", "resnet101", 41),
    "caffe:vgg16": WeightsSource(
        url="https://dl.dropbox.com/s/gstw7122padlf0l/imagenet_models.tgz?dl=0", fmt="caffemodel", arch="vgg16",
        checksum="md5:ed34ca912d6782edfb673a8c3a0bda6d", member="VGG16.v2.caffemodel",
        checksum_note="py-faster-rcnn publishes the archive's MD5 only",
        cite="py-faster-rcnn data/scripts/fetch_imagenet_models.sh l.6-8 (the first version, l.7, had "
             "http://www.cs.berkeley.edu/~rbg/faster-rcnn-data/imagenet_models.tgz, same MD5)"),
}

#: the weights each paper config names, by backbone (the paper's own: MSRA ResNets, the Caffe VGG-16); other
#: trunks get torchvision's
PAPER_WEIGHTS = {"resnet50": "msra:R-50", "resnet101": "msra:R-101", "vgg16": "caffe:vgg16"}

_NAME_RE = re.compile(r"([a-z0-9_]+):([A-Za-z0-9._-]+)")


def list_weights() -> list[str]:
    """The weights names :func:`detres.backbones.read_weights` and ``model.backbone.weights`` accept."""
    return sorted(WEIGHTS)


def suggest_weights(arch: str) -> str | None:
    """The weights name to use for backbone ``arch`` (the paper's for ResNet-50/101 and VGG-16), or None."""
    return PAPER_WEIGHTS.get(arch) or (f"torchvision:{arch}" if f"torchvision:{arch}" in WEIGHTS else None)


def is_weights_name(value: Any) -> bool:
    """True when ``value`` is written ``source:id`` with a known source (``torchvision``, ``msra``, ``caffe``) and
    is not an existing file (a file of that name wins)."""
    if not isinstance(value, str) or os.path.exists(value):
        return False
    m = _NAME_RE.fullmatch(value)
    return m is not None and m.group(1) in {k.split(":", 1)[0] for k in WEIGHTS}


def weights_path(name: str) -> Path:
    """The local detres weights file of ``name``: downloaded (and converted) on first use, from the cache after.
    ValueError for an unknown name (the known ones listed); DownloadError when the file cannot be fetched."""
    if name not in WEIGHTS:
        raise ValueError(f"unknown weights name {name!r}; known: {', '.join(list_weights())} (or give a file path)")
    src = WEIGHTS[name]
    folder = cache_dir() / name.split(":", 1)[0]
    raw = folder / Path(src.url.split("?", 1)[0]).name
    if src.fmt == "torchvision":
        return download(src.url, raw, checksum=src.checksum, checksum_url=src.checksum_url)
    out = folder / f"{(src.member or raw.name).split('.')[0]}.detres.pth"
    if out.is_file():
        return out
    with file_lock(out):  # one process converts, the others wait and read its file
        if not out.is_file():
            path = download(src.url, raw, checksum=src.checksum, checksum_url=src.checksum_url)
            if src.member is not None:
                path = _unpack_member(path, src.member, folder / raw.name.split(".")[0])
            state, meta = CONVERTERS[src.fmt](path, src.arch)
            meta = {**meta, "weights_name": name, "source_url": src.url}
            atomic_write(out, lambda f: torch.save({"model": state, "meta": meta}, f), binary=True)
    return out


def _unpack_member(archive: Path, member: str, folder: Path) -> Path:
    """The archive member whose base name is ``member``, unpacked under ``folder``."""
    import tarfile

    with tarfile.open(archive) as t:
        names = [n for n in t.getnames() if os.path.basename(n) == member]
    if not names:
        raise ValueError(f"{archive}: holds no {member} (a wrong or changed archive; delete it to download again)")
    extract(archive, folder, members=names[:1])
    return folder / names[0]


def _convert_caffe2(path: Path, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from detres.backbones.convert import convert_weights

    state, meta, _ = convert_weights(path, arch=arch, fmt="caffe2")
    return state, meta


def _convert_caffemodel(path: Path, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from detres.backbones.caffe import convert_caffemodel  # the .caffemodel reader (imported when needed)

    return convert_caffemodel(path, arch=arch, check=True)


#: fmt -> ``f(downloaded_path, arch) -> (state_dict, meta)``
CONVERTERS: dict[str, Callable[[Path, str], tuple[dict[str, torch.Tensor], dict[str, Any]]]] = {
    "caffe2": _convert_caffe2, "caffemodel": _convert_caffemodel}
