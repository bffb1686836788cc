"""The one downloader: HTTP(S) GET into ``<dest>.part`` (resumed with a Range header), checksum, rename.

``download(url, dest, checksum=...)`` is what every named weights file (:mod:`detres.backbones.hub`) and data
archive (:mod:`detres.data.download`) goes through:

- only one process per machine downloads a file: a lock file ``<dest>.lock`` beside the target is held with
  ``fcntl.flock`` while downloading, the others wait on it and then find the file in place (what the ranks of
  one ``torchrun`` node do when each asks for the same weights);
- the bytes go to ``<dest>.part``; an interrupted download keeps it and the next try asks only for the missing
  bytes (``Range: bytes=N-``; a server that answers 200 instead of 206 sends the whole file again);
- the finished file is checked before it is renamed into place (``os.replace``, atomic), so ``dest`` exists only
  when it is complete and checked; a mismatch deletes the ``.part`` file and says so with both hashes;
- no network, a refused connection or an HTTP error is one ``DownloadError`` (a ``ValueError``) naming the URL
  and the local path where the file can be put by hand (offline machines).

Checksums are ``"<algorithm>:<hex>"``: ``sha256:<64 hex>`` (full), ``sha256-prefix:<hex>`` (torchvision's file
names carry only the first hex digits of the SHA-256: torch 2.14.1's torch/hub.py ``HASH_REGEX``
and ``download_url_to_file(hash_prefix=)`` check that prefix) or ``md5:<32 hex>`` (what py-faster-rcnn, the VOC
mirrors and Detectron's ``.md5sum`` files publish).

``DETRES_MIRROR=http://host:port/prefix`` redirects every URL: the scheme and host are replaced and the path is
kept, so a mirror (or a test's server on 127.0.0.1) serves the files under the publishers' own paths.
``extract`` unpacks tar and zip archives and refuses any member that would land outside the target folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

__all__ = ["DownloadError", "MIRROR_ENV", "CACHE_ENV", "mirror_url", "cache_dir", "file_lock", "parse_checksum",
           "file_checksum", "download", "fetch_text", "extract", "remove_quietly"]

logger = logging.getLogger("detres")

MIRROR_ENV = "DETRES_MIRROR"
CACHE_ENV = "DETRES_CACHE"
ALGORITHMS = {"sha256": 64, "sha256-prefix": None, "md5": 32}
_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A file could not be fetched or failed its check; the message is one line with the URL and the path."""


def mirror_url(url: str) -> str:
    """``url`` with its scheme and host replaced by ``$DETRES_MIRROR`` (path kept), or ``url`` itself."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    base = urllib.parse.urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ValueError(f"${MIRROR_ENV}={mirror!r}: expected http(s)://host[:port][/prefix]")
    path = urllib.parse.urlsplit(url).path
    return f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{path}"


def cache_dir() -> Path:
    """Where named weights are kept: ``$DETRES_CACHE``, else ``torch.hub.get_dir()/detres`` (``$TORCH_HOME``)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env)
    import torch.hub

    return Path(torch.hub.get_dir()) / "detres"


@contextlib.contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<target>.lock`` (created beside it): one process per machine at a time;
    the others block here until it is released. The lock file stays (removing it would race a waiter)."""
    lock = f"{os.fspath(target)}.lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def parse_checksum(checksum: str, *, source: str = "checksum") -> tuple[str, str]:
    """``"sha256:<hex>"`` -> ``("sha256", "<hex>")``; ValueError naming ``source`` for any other form."""
    algo, sep, value = str(checksum).partition(":")
    want = ALGORITHMS.get(algo)
    if not sep or algo not in ALGORITHMS or not re.fullmatch(r"[0-9a-f]+", value or "") \
            or (want is not None and len(value) != want) or (want is None and not 8 <= len(value) < 64):
        raise ValueError(f"{source}: {checksum!r} is not 'sha256:<64 hex>', 'sha256-prefix:<8-63 hex>' or "
                         "'md5:<32 hex>'")
    return algo, value


def file_checksum(path: str | os.PathLike, algo: str) -> str:
    """The hex digest of ``path`` (``sha256-prefix`` gives the full SHA-256)."""
    h = hashlib.md5() if algo == "md5" else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(path: str | os.PathLike, checksum: str) -> tuple[bool, str]:
    algo, value = parse_checksum(checksum)
    actual = file_checksum(path, algo)
    return (actual.startswith(value) if algo == "sha256-prefix" else actual == value), f"{algo}:{actual}"


def _by_hand(url: str, dest: str) -> str:
    return f"without internet, download {url} elsewhere and place it at {dest}"


def _open(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "detres", **({"Range": f"bytes={start}-"} if start
                                                                           else {})})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs from the registries


def _fetch_once(url: str, part: str, timeout: float) -> None:
    """One GET of ``url`` appended to ``part`` (from its current size). Raises OSError/URLError when the transfer
    fails (the bytes received so far stay in ``part``)."""
    start = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        resp = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        os.remove(part)  # the range lies past the end: the .part file is not a prefix of this file
        start, resp = 0, _open(url, 0, timeout)
    with resp:
        resumed = start > 0 and resp.status == 206
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received, total = 0, (expected + (start if resumed else 0)) if expected is not None else None
        step = max(total // 10, _CHUNK) if total else None  # a log line per tenth of a known size
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                f.write(chunk)
                received += len(chunk)
                if step and (received // step) != ((received - len(chunk)) // step):
                    done = received + (start if resumed else 0)
                    logger.info("%s: %d of %d MB", url, done >> 20, total >> 20)
        if expected is not None and received < expected:
            raise ConnectionError(f"connection closed after {received} of {expected} bytes")


def _fetch(url: str, part: str, dest: str, *, timeout: float, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout)
            return
        except urllib.error.HTTPError as e:
            raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; {_by_hand(url, dest)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            kept = os.path.getsize(part) if os.path.exists(part) else 0
            if attempt == retries or kept == 0:
                raise DownloadError(f"cannot download {url} ({reason}); {kept} bytes kept in {part} (the next try "
                                    f"resumes there); {_by_hand(url, dest)}") from None
            logger.warning("download of %s interrupted (%s) after %d bytes; resuming", url, reason, kept)


def fetch_text(url: str, *, timeout: float = 30.0, what: str = "file") -> str:
    """The body of a small text file at ``url`` (e.g. a published ``.md5sum``); DownloadError on failure."""
    try:
        with _open(url, 0, timeout) as resp:
            return resp.read(1 << 16).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download the {what} {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot download the {what} {url} ({getattr(e, 'reason', None) or e})") from None


def download(url: str, dest: str | os.PathLike, *, checksum: str | None = None, checksum_url: str | None = None,
             timeout: float = 60.0, retries: int = 3) -> Path:
    """``dest``, downloaded from ``url`` (redirected by ``$DETRES_MIRROR``) unless it is already there.

    ``checksum``: ``"<algorithm>:<hex>"`` checked on the new file and on a file already at ``dest`` (one put
    there by hand too); ``checksum_url``: where the publisher keeps the MD5 (``<url>.md5sum``), read before the
    download when no ``checksum`` is pinned. Neither: the file is taken as it comes and its SHA-256 is logged so
    that it can be pinned. Interrupted transfers are resumed up to ``retries`` times in this call and from the
    ``.part`` file in the next one. Raises DownloadError (one line: URL and where to place the file by hand).
    """
    dest = os.fspath(dest)
    url = mirror_url(url)
    if checksum is not None:
        parse_checksum(checksum, source=f"checksum of {url}")
    with file_lock(dest):
        if os.path.isfile(dest):
            _check_existing(dest, checksum)
            return Path(dest)
        if checksum is None and checksum_url is not None:
            try:
                checksum = _published_md5(mirror_url(checksum_url))
            except DownloadError as e:
                raise DownloadError(f"{e}; {_by_hand(url, dest)}") from None
        part = f"{dest}.part"
        logger.info("downloading %s to %s", url, dest)
        _fetch(url, part, dest, timeout=timeout, retries=retries)
        if checksum is not None:
            ok, actual = _matches(part, checksum)
            if not ok:
                os.remove(part)
                raise DownloadError(f"{url}: checksum mismatch: expected {checksum}, got {actual}; the partial file "
                                    f"{part} was deleted (run again to download it anew)")
        else:
            logger.warning("%s: no checksum is published for this file; its sha256 is %s", url,
                           file_checksum(part, "sha256"))
        os.replace(part, dest)
    return Path(dest)


def _check_existing(dest: str, checksum: str | None) -> None:
    if checksum is None:
        return
    ok, actual = _matches(dest, checksum)
    if not ok:
        raise DownloadError(f"{dest}: checksum mismatch: expected {checksum}, got {actual}; delete the file (it is "
                            "downloaded again) or replace it with the published one")


def _published_md5(url: str) -> str:
    text = fetch_text(url, what="published checksum")
    m = re.match(r"\s*([0-9a-fA-F]{32})\b", text)
    if m is None:
        raise DownloadError(f"{url}: not an MD5 checksum file (expected '<32 hex digits>  <name>')")
    return f"md5:{m.group(1).lower()}"


# --------------------------------------------------------------------------------------------------
# archives
# --------------------------------------------------------------------------------------------------
def _inside(root: str, name: str) -> bool:
    target = os.path.realpath(os.path.join(root, name))
    return not os.path.isabs(name) and os.path.commonpath([root, target]) == root


def extract(archive: str | os.PathLike, folder: str | os.PathLike, *, members: list[str] | None = None) -> list[str]:
    """Unpack the tar (any compression) or zip ``archive`` into ``folder``; returns the member names unpacked.

    ``members``: only these names (all when None; a missing one is an error). Refused before anything is
    written, with the archive and the member named: an absolute name, a name that climbs out of ``folder``
    (``..``), links (tar symbolic and hard links: a later member could be written through one) and device
    files. Existing files are overwritten, so an extraction cut short is simply run again.
    """
    archive, root = os.fspath(archive), os.path.realpath(os.fspath(folder))
    os.makedirs(root, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = _select(archive, [i.filename for i in z.infolist()], members)
            for name in names:
                if not _inside(root, name):
                    raise ValueError(f"{archive}: member {name!r} would be written outside {root}; refused")
            for name in names:
                z.extract(name, root)
        return names
    try:
        tar = tarfile.open(archive)  # noqa: SIM115 - closed below
    except tarfile.TarError as e:
        raise ValueError(f"{archive}: neither a zip nor a tar archive ({e})") from None
    with tar:
        infos = tar.getmembers()
        names = _select(archive, [i.name for i in infos], members)
        chosen = [i for i in infos if i.name in set(names)]
        for info in chosen:
            if not _inside(root, info.name):
                raise ValueError(f"{archive}: member {info.name!r} would be written outside {root}; refused")
            if not (info.isfile() or info.isdir()):
                raise ValueError(f"{archive}: member {info.name!r} is a link or device file; refused")
        # our checks above are the rule; tarfile's "data" filter (Python >= 3.10.12) is a second guard
        tar.extractall(root, members=chosen, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return names


def _select(archive: str, names: list[str], members: list[str] | None) -> list[str]:
    if members is None:
        return names
    missing = sorted(set(members) - set(names))
    if missing:
        raise ValueError(f"{archive}: the archive has no member {missing[0]!r}")
    return list(members)


def remove_quietly(path: str | os.PathLike) -> None:
    """Delete a file or folder if it exists (a finished archive, a stale partial tree)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
