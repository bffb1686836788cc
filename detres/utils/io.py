"""Files: atomic writes, the data root, and reading pickles without running code.

Atomic writes go to a temporary file in the target's folder, are flushed and fsync'ed, then renamed
over the target (``os.replace`` is atomic on POSIX). A killed process therefore leaves either the old
file or the new one, never half of one; the temporary file is removed when the write fails.

Pickles from outside (Detectron's ``R-50.pkl``, CIFAR-10's ``data_batch_*``) are read by
:class:`SafeUnpickler`, which resolves only an allow-list of numpy/container globals: the only way a
pickle can call code is through a global it names, so refusing unknown globals means no code from the
file ever runs.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from detres.utils import stop

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "read_json", "sha256_file", "check_zip_crc", "data_root",
           "UnsafePickleError", "SafeUnpickler", "safe_load_pickle"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = False) -> str:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it and rename it to ``path``.

    Creates the folder. On any error the temporary file is removed and the old ``path`` (if any) is
    left untouched. A write the disk refuses (full: ENOSPC; the file-size limit ``ulimit -f``: EFBIG; a
    quota: EDQUOT) raises that ``OSError`` naming ``path`` and the free space, also where the writer hid it
    (``torch.save`` reports it as ``RuntimeError: ... unexpected pos``). Ctrl-C or SIGTERM during the write
    is raised after it (:func:`detres.utils.stop.deferred`): a checkpoint is never cut by a stop.
    Returns ``path`` as a string.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    watched = None
    with stop.deferred():
        try:
            with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as raw:
                watched = _WatchedFile(raw)
                write(watched)
                watched.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise OSError(exc.errno, f"{os.strerror(exc.errno)}: cannot write in {folder} ({_free_space(folder)}; "
                              "the old file, if any, is unchanged)", path) from exc
            refused = _disk_refusal(exc, watched.error if watched is not None else None, folder)
            if refused is not None:
                limit = "over the file-size limit (ulimit -f); " if refused == errno.EFBIG else ""
                raise OSError(refused, f"{os.strerror(refused)} ({limit}{_free_space(folder)}; the file was not written; "
                              "the old one, if any, is unchanged)", path) from exc
            raise
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class _WatchedFile:
    """A file object that remembers the first OSError its ``write``/``flush`` raised (a writer such as
    ``torch.save`` replaces it with its own error, which no longer says why)."""

    def __init__(self, f: IO) -> None:
        self._f, self.error = f, None

    def write(self, data: Any) -> Any:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _disk_refusal(exc: BaseException, seen: OSError | None, folder: str) -> int | None:
    """The errno (ENOSPC, EFBIG, EDQUOT) behind a failed write, or None when the disk did not refuse it."""
    for e in (exc, seen):
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return e.errno
    return errno.ENOSPC if _nearly_full(folder) else None


def _free_space(folder: str) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**30:.1f} GiB in {folder}"


def _nearly_full(folder: str, *, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> str:
    """Write ``obj`` as JSON (sorted keys) to ``path`` atomically."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=indent, sort_keys=True))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; ValueError naming the file when it is missing, unreadable or not JSON (json's own
    message, ``Expecting property name ...: line 1 column 2``, does not say which file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_zip_crc(path: str | os.PathLike) -> bool:
    """Check every member of a zip file (``torch.save``'s format) against the CRC-32 stored in the file.

    Returns False when ``path`` is not a zip (a legacy torch file: nothing to check), True when every
    member matches; raises ValueError naming the file and the member when one does not (a flipped bit, a
    copy cut short) or the zip structure itself is damaged."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise ValueError(f"{path}: damaged file ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise ValueError(f"{path}: damaged file: the data of {bad!r} does not match its CRC-32 (corrupted on disk or "
                         "in a copy)")
    return True


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` when given (non-empty), else ``$DETRES_DATA``, else ``./data``."""
    return Path(root or os.environ.get("DETRES_DATA") or "data")


# --------------------------------------------------------------------------------------------------
# Safe unpickling
# --------------------------------------------------------------------------------------------------

#: (module, name) pairs a data or weights pickle may reference. numpy moved its internals from
#: ``numpy.core`` to ``numpy._core`` in 2.0; pickles written with either spelling must load.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")]
    + [(mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")]
    + [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        # Protocol-2 pickles written by Python 3 store ``bytes`` as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    ]
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global that a weights or data file has no business calling."""


def _elements(shape: Any) -> int:
    if isinstance(shape, int):
        shape = (shape,)
    n = 1
    for d in tuple(shape):
        n *= max(int(d), 0)
    return n


class _CheckedArray(np.ndarray):
    """What a pickled array is rebuilt as while :class:`SafeUnpickler` reads a file: its ``__setstate__``
    refuses a shape with more elements than the file has bytes (each element of an object array takes at
    least one byte of the file, a number its full size) before numpy allocates it. Turned back into a
    plain ``ndarray`` when loading ends."""

    _limit = 0

    def __setstate__(self, state):
        # numpy's state: (version, shape, dtype, is_fortran, data), or without the version
        shape = (state[1] if len(state) == 5 else state[0]) if isinstance(state, tuple) and len(state) >= 4 else ()
        if _elements(shape) > type(self)._limit:
            raise UnsafePickleError(f"an array of shape {tuple(shape) if not isinstance(shape, int) else shape} "
                                    f"cannot come from a file of {type(self)._limit} bytes (the pickle is damaged or "
                                    "made to exhaust memory)")
        super().__setstate__(state)


class SafeUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only numpy-array, number, string and container globals.

    Anything else (``os.system``, ``builtins.eval``, a class with a ``__reduce__`` ...) raises
    :class:`UnsafePickleError` before it is called: :meth:`find_class` is the only way a pickle can reach
    a callable, so refusing there means no code from the file runs. ``max_bytes`` (the file's size) bounds
    every array it may ask numpy to allocate: a pickle cannot hold more data than its own bytes.
    """

    def __init__(self, file, *, max_bytes: int | None = None, **kwargs):
        super().__init__(file, **kwargs)
        limit = (1 << 62) if max_bytes is None else max(int(max_bytes), 0)
        self._array_type = type("_CheckedArray", (_CheckedArray,), {"_limit": limit})
        self._limit = limit

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented on the class
        if (module, name) in _ALLOWED_GLOBALS:
            found = super().find_class(module, name)
            if name == "_reconstruct":
                return self._reconstruct(found)
            if (module, name) == ("numpy", "ndarray"):
                return self._array_type
            return found
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': the file may only hold numpy arrays, "
            "numbers, strings and dicts/lists"
        )

    def _reconstruct(self, real: Callable) -> Callable:
        limit, array_type = self._limit, self._array_type

        def reconstruct(subtype, shape, dtype):
            if _elements(shape) > limit:
                raise UnsafePickleError(f"an array of shape {shape} cannot come from a file of {limit} bytes")
            if isinstance(subtype, type) and issubclass(subtype, np.ndarray):
                subtype = array_type
            return real(subtype, shape, dtype)
        return reconstruct

    def load(self) -> Any:
        """The file's object with plain ndarrays; UnsafePickleError when what it built would expand (counting
        each shared reference as often as it is referenced) beyond :meth:`element_limit` elements."""
        obj = super().load()
        _check_expansion(obj, self.element_limit())
        return _plain(obj)

    def element_limit(self) -> int:
        """The most elements (container entries, array elements) the loaded object may expand to: each takes
        at least one byte of the file unless it is a shared reference, so a file of N bytes holds about N
        (4 N + 64 Ki leaves room for numbers stored in fewer bytes than an element's count)."""
        return 4 * min(self._limit, 1 << 60) + (1 << 16)


def _children(obj: Any) -> list | None:
    """The entries of a container the unpickler may build (None for a leaf)."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return list(obj.flat)
    return None


def _check_expansion(obj: Any, limit: int) -> None:
    """Refuse ``obj`` when, written out without sharing, it holds more than ``limit`` elements: a few hundred
    bytes of shared references (``a = [x] * 9; b = [a] * 9; ...``) make a structure whose every walk
    (``np.asarray``, a copy, :func:`_plain`) takes exponential time and memory. Each distinct object is
    visited once (memoised by id, iteratively: no recursion limit), so the check itself is linear in the
    objects built, which the file's size bounds."""
    size: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(obj, False)]
    keep = []  # holds the visited objects so their ids stay unique during the walk
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size and not done:
            continue
        kids = _children(node)
        if kids is None:
            size[key] = int(node.size) if isinstance(node, np.ndarray) else 1
            continue
        if not done:
            size[key] = 0  # marks "being expanded": a cycle counts its back-reference once
            keep.append(node)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
            continue
        total = len(kids) + sum(size.get(id(k), 1) for k in kids)
        if total > limit:
            raise UnsafePickleError(f"its objects expand to more than {limit} elements (shared references that "
                                    "would exhaust time and memory when read; the pickle is damaged or made to "
                                    "do that)")
        size[key] = total


def _plain(obj: Any, seen: dict[int, Any] | None = None) -> Any:
    """``obj`` with every :class:`_CheckedArray` inside dicts, lists and tuples viewed as a plain ndarray;
    a shared object is converted once (``seen``), so the walk is linear in the distinct objects."""
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, _CheckedArray):
        out = obj.view(np.ndarray)
        seen[id(obj)] = out
        if out.dtype == object:
            for i, v in enumerate(out.flat):
                out.flat[i] = _plain(v, seen)
        return out
    seen[id(obj)] = obj
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _plain(obj[k], seen)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = _plain(v, seen)
    elif isinstance(obj, tuple):
        seen[id(obj)] = out = tuple(_plain(v, seen) for v in obj)
        return out
    return obj


def safe_load_pickle(path: str | os.PathLike, *, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`.

    ``encoding="latin1"`` lets Python-2 era pickles (Detectron's ``R-50.pkl``, CIFAR-10's batches) give
    numpy the raw bytes it expects. Raises ValueError naming the file when it is not a readable pickle
    or names a disallowed global (the message then says "unsafe pickle").
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding=encoding, max_bytes=os.fstat(f.fileno()).st_size).load()
    except UnsafePickleError as e:
        raise ValueError(f"{path}: unsafe pickle: {e}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a readable pickle (containers nested too deeply)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
