"""detres.utils.download against a server on 127.0.0.1: first download, cached use, checksum mismatch, resume,
404, no server, two processes at once, the mirror variable, and archives that try to escape their folder."""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import socket
import tarfile
import zipfile

import pytest

from detres.utils.download import DownloadError, download, extract, mirror_url, parse_checksum
from tests._http_helpers import FileServer

BODY = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture()
def server(monkeypatch):
    with FileServer() as s:
        s.files["/models/w.bin"] = BODY
        monkeypatch.setenv("DETRES_MIRROR", s.url)
        yield s


URL = "https://example.org/models/w.bin"  # the publisher's URL; DETRES_MIRROR sends it to the test server


def test_mirror_replaces_scheme_and_host_only(monkeypatch):
    monkeypatch.setenv("DETRES_MIRROR", "http://127.0.0.1:8000/pub/")
    assert mirror_url("https://download.pytorch.org/models/a-1234abcd.pth?dl=0") == \
        "http://127.0.0.1:8000/pub/models/a-1234abcd.pth"
    monkeypatch.setenv("DETRES_MIRROR", "")
    assert mirror_url("https://x.org/a") == "https://x.org/a"
    monkeypatch.setenv("DETRES_MIRROR", "ftp://h")
    with pytest.raises(ValueError, match="DETRES_MIRROR"):
        mirror_url("https://x.org/a")


def test_first_download_then_cached_without_a_request(server, tmp_path):
    dest = tmp_path / "c" / "w.bin"
    assert download(URL, dest, checksum=f"sha256:{SHA}") == dest
    assert dest.read_bytes() == BODY and not os.path.exists(f"{dest}.part")
    assert server.count("/models/w.bin") == 1
    download(URL, dest, checksum=f"sha256:{SHA}")
    download(URL, dest, checksum=f"sha256-prefix:{SHA[:8]}")
    assert server.count("/models/w.bin") == 1  # second and third use: 0 requests


def test_checksum_mismatch_deletes_the_partial_file_and_names_both_hashes(server, tmp_path):
    dest = tmp_path / "w.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(URL, dest, checksum=f"sha256:{wrong}")
    msg = str(e.value)
    assert f"sha256:{wrong}" in msg and f"sha256:{SHA}" in msg and "deleted" in msg and "\n" not in msg
    assert not dest.exists() and not os.path.exists(f"{dest}.part")
    with pytest.raises(DownloadError, match="checksum mismatch"):  # a torchvision-style prefix is checked too
        download(URL, dest, checksum="sha256-prefix:deadbeef")
    md5 = hashlib.md5(BODY).hexdigest()
    assert download(URL, dest, checksum=f"md5:{md5}").read_bytes() == BODY


def test_a_file_already_in_place_is_checked(server, tmp_path):
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"not the file")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(URL, dest, checksum=f"sha256:{SHA}")
    assert server.count("/models/w.bin") == 0


def test_interrupted_download_resumes_with_only_the_missing_bytes(server, tmp_path):
    dest = tmp_path / "w.bin"
    server.cut["/models/w.bin"] = 1
    with pytest.raises(DownloadError) as e:  # no retry in this call: the .part file is kept
        download(URL, dest, checksum=f"sha256:{SHA}", retries=0)
    part = f"{dest}.part"
    assert os.path.getsize(part) == len(BODY) // 2 and "resumes" in str(e.value)
    download(URL, dest, checksum=f"sha256:{SHA}", retries=0)
    assert dest.read_bytes() == BODY
    assert server.requests[-1] == ("/models/w.bin", f"bytes={len(BODY) // 2}-")


def test_a_cut_inside_one_call_is_resumed_by_the_retry(server, tmp_path):
    dest = tmp_path / "w.bin"
    server.cut["/models/w.bin"] = 1
    assert download(URL, dest, checksum=f"sha256:{SHA}").read_bytes() == BODY
    assert [r for _, r in server.requests] == [None, f"bytes={len(BODY) // 2}-"]


def test_404_is_one_line_with_url_and_path(server, tmp_path):
    dest = tmp_path / "missing.bin"
    with pytest.raises(DownloadError) as e:
        download("https://example.org/models/missing.bin", dest)
    msg = str(e.value)
    assert "404" in msg and f"{server.url}/models/missing.bin" in msg and str(dest) in msg and "\n" not in msg
    assert not dest.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_one_line_with_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRES_MIRROR", f"http://127.0.0.1:{_free_port()}")
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError) as e:
        download(URL, dest, timeout=5)
    msg = str(e.value)
    assert "/models/w.bin" in msg and f"place it at {dest}" in msg and "\n" not in msg


def _worker(url, dest, sha, q):
    try:
        q.put(download(url, dest, checksum=f"sha256:{sha}").read_bytes() == BODY)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        q.put(repr(e))


def test_two_processes_one_request_both_get_the_file(server, tmp_path):
    dest = tmp_path / "w.bin"
    server.delay = 1.0  # the first download takes a second: without the lock the second process would request too
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(URL, str(dest), SHA, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [True, True]
    assert server.count("/models/w.bin") == 1


def test_checksum_format_is_checked():
    assert parse_checksum("md5:" + "a" * 32) == ("md5", "a" * 32)
    for bad in ("sha256:abc", "md5:" + "a" * 31, "crc:1234", "sha256-prefix:1234567", "sha256:" + "G" * 64):
        with pytest.raises(ValueError):
            parse_checksum(bad)


def _tar(path, members: dict[str, bytes], *, link: tuple[str, str] | None = None):
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            t.addfile(info)


def test_extract_unpacks_and_refuses_members_that_escape(tmp_path):
    good = tmp_path / "good.tar"
    _tar(good, {"VOCdevkit/VOC2007/a.txt": b"x"})
    assert extract(good, tmp_path / "out") == ["VOCdevkit/VOC2007/a.txt"]
    assert (tmp_path / "out" / "VOCdevkit" / "VOC2007" / "a.txt").read_bytes() == b"x"
    for i, members in enumerate(({"../evil.txt": b"x"}, {"/tmp/evil_abs.txt": b"x"}, {"a/../../evil.txt": b"x"})):
        bad = tmp_path / f"bad{i}.tar"
        _tar(bad, {"fine.txt": b"y", **members})
        with pytest.raises(ValueError, match="outside"):
            extract(bad, tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}" / "fine.txt").exists()  # refused before anything is written
    assert not (tmp_path / "evil.txt").exists()
    linked = tmp_path / "link.tar"
    _tar(linked, {}, link=("ln", "/etc"))
    with pytest.raises(ValueError, match="link"):
        extract(linked, tmp_path / "outl")
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("ok/a.txt", "a")
        f.writestr("../zip_evil.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        extract(z, tmp_path / "outz")
    assert not (tmp_path / "zip_evil.txt").exists()
