"""Data sets by name: ``get_data("voc2007", root)`` downloads the official archives, checks and unpacks them into
the layout the configs read (data/README.md): ``<root>/VOCdevkit/VOC2007``, ``<root>/coco/train2014`` and
``<root>/coco/annotations/instances_train2014.json``.

Each archive goes through :func:`detres.utils.download.download` into ``<root>/downloads/`` (resumed when cut,
checked, one process per machine), is unpacked by :func:`detres.utils.download.extract` (members that would land
outside ``<root>`` refused), and a marker ``<root>/downloads/<archive>.done`` written last says it is complete; the
archive is then deleted (COCO's would double the disk used). A second call finds the markers and the checked
files and downloads nothing. ``$DETRES_MIRROR`` redirects the downloads (a mirror, or a test's server).

Checksums: the VOC archives' MD5s as torchvision's ``datasets/voc.py`` pins them (``DATASET_YEAR_DICT``, "2007", "2007-test" and
"2012", as installed with torchvision 0.29.1; the same values in PaddleDetection's ppdet/utils/download.py ``DATASETS['voc']``). cocodataset.org
publishes no checksum; the MD5s pinned for COCO are third-party records (the 2017 ones in PaddleDetection's
ppdet/utils/download.py ``DATASETS["coco"]`` at commit 005e0ff, 2014 train/val in Salesforce LAVIS
lavis/datasets/download_scripts/download_coco.py, ``DATA_URL``'s comments); ``annotations_trainval2014.zip`` has no record we
could check, so nothing is pinned for it (its SHA-256 is logged).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from detres.utils.download import download, extract, remove_quietly
from detres.utils.io import atomic_write_text, data_root

__all__ = ["Archive", "DataSource", "DATASETS", "list_data", "get_data", "data_command"]

_VOC = "https://thor.robots.ox.ac.uk/pascal/VOC/"
_COCO = "http://images.cocodataset.org/"


@dataclass(frozen=True)
class Archive:
    """One archive: its URL, ``"<algorithm>:<hex>"`` checksum (None: none is published) and the folder under the
    data root it unpacks into (its members carry the rest of the path)."""
    url: str
    checksum: Optional[str]
    into: str = ""


@dataclass(frozen=True)
class DataSource:
    """A data set by name: its archives and the files that prove it is in place (relative to the data root)."""
    archives: tuple[Archive, ...]
    expect: tuple[str, ...]
    note: str = ""


DATASETS: dict[str, DataSource] = {
    "voc2007": DataSource(
        archives=(Archive(_VOC + "voc2007/VOCtrainval_06-Nov-2007.tar", "md5:c52e279531787c972589f7e41ab4ae64"),
                  Archive(_VOC + "voc2007/VOCtest_06-Nov-2007.tar", "md5:b6e924de25625d8de591ea690078ad9f")),
        expect=("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", "VOCdevkit/VOC2007/ImageSets/Main/test.txt")),
    "voc2012": DataSource(
        archives=(Archive(_VOC + "voc2012/VOCtrainval_11-May-2012.tar", "md5:6cd6e144f989b92b3379bac3b3de84fd"),),
        expect=("VOCdevkit/VOC2012/ImageSets/Main/trainval.txt",),
        note="VOC 2012 test is given out by the evaluation server after registration: place it by hand"),
    "coco2014": DataSource(
        archives=(Archive(_COCO + "zips/train2014.zip", "md5:0da8c0bd3d6becc4dcb32757491aca88", "coco"),
                  Archive(_COCO + "zips/val2014.zip", "md5:a3d79f5ed8d289b7a7554ce06a5782b3", "coco"),
                  Archive(_COCO + "annotations/annotations_trainval2014.zip", None, "coco")),
        expect=("coco/annotations/instances_train2014.json", "coco/annotations/instances_val2014.json",
                "coco/train2014", "coco/val2014")),
    "coco2017": DataSource(
        archives=(Archive(_COCO + "zips/train2017.zip", "md5:cced6f7f71b7629ddf16f17bbcfab6b2", "coco"),
                  Archive(_COCO + "zips/val2017.zip", "md5:442b8da7639aecaf257c1dceb8ba8c80", "coco"),
                  Archive(_COCO + "annotations/annotations_trainval2017.zip", "md5:f4bbac642086de4f52a3fdda2de5fa2c",
                          "coco")),
        expect=("coco/annotations/instances_train2017.json", "coco/annotations/instances_val2017.json",
                "coco/train2017", "coco/val2017")),
}


def list_data() -> list[str]:
    """The names :func:`get_data` (``tools/get_data.py``) accepts."""
    return sorted(DATASETS)


def data_command(name: str, root: str | os.PathLike | None = None) -> str:
    """The command that gets data set ``name`` into ``root`` (what a missing-data message tells the user)."""
    where = f" --root {root}" if root not in (None, "", "data") else ""
    return f"python tools/get_data.py {name}{where}"


def get_data(name: str, root: str | os.PathLike | None = None) -> Path:
    """Download, check and unpack data set ``name`` under ``root`` (default: ``$DETRES_DATA`` or ``./data``);
    returns the data root to use (``data.root`` / ``--data-root``). Nothing is fetched for archives already
    unpacked. ValueError for an unknown name; DownloadError (one line: URL, path) when an archive cannot be had."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(list_data())}")
    base = data_root(root)
    downloads = base / "downloads"
    for archive in DATASETS[name].archives:
        file = downloads / archive.url.rsplit("/", 1)[1]
        done = Path(f"{file}.done")
        if done.is_file():
            continue
        download(archive.url, file, checksum=archive.checksum)
        extract(file, base / archive.into)
        atomic_write_text(done, archive.url + "\n")
        remove_quietly(file)
    missing = [p for p in DATASETS[name].expect if not (base / p).exists()]
    if missing:
        raise ValueError(f"{base / missing[0]}: not there after unpacking {name}'s archives (a changed archive?); "
                         f"delete {downloads} and run {data_command(name, root)} again")
    return base
