"""Checkpoints: atomic writes, integrity checks, RNG state capture, and finding the last one to resume.

A checkpoint is a dict ``{"model": state_dict (unwrapped), "meta": weights metadata, "optimizer",
"scheduler", "scaler", "iteration" (iterations completed), "rng", "config"}`` saved with ``torch.save``.
Because it has "model" and "meta", it is also usable as ``model.backbone.weights`` /
``detres.backbones.read_weights``.

Writes go to a temporary file in the same folder, are fsync'ed and then renamed over the final name
(``os.replace`` is atomic on POSIX), so a killed process leaves either the old file or the new one.
A ``<file>.sha256`` sidecar is written next to each checkpoint (after the checkpoint itself, so a
sidecar never vouches for a file that is not there yet); :func:`load_checkpoint` checks it, or, without
one (a checkpoint copied alone), the CRC-32 that the zip format stores for every member, and turns torch's
zip-reader errors into a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import torch

from detres.utils import stop
from detres.utils.io import atomic_write, atomic_write_text, check_zip_crc, sha256_file

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "find_last_checkpoint",
           "checkpoint_name", "LAST_CHECKPOINT_FILE"]

LAST_CHECKPOINT_FILE = "last_checkpoint"
_NAME_RE = re.compile(r"^model_(\d+)\.pth$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or lacks required entries."""


def checkpoint_name(iteration: int) -> str:
    """File name for the checkpoint after ``iteration`` completed iterations: ``model_0005000.pth``."""
    return f"model_{iteration:07d}.pth"


def save_checkpoint(state: dict[str, Any], path: str, *, update_last: bool = True) -> str:
    """Atomically write ``state`` to ``path`` (+ ``path.sha256``); record it in ``last_checkpoint``.

    The three files are one write for Ctrl-C and SIGTERM (raised after it, :func:`detres.utils.stop.deferred`).
    An older sidecar of the same name is removed first: a process killed between the checkpoint and its new
    sidecar then leaves a checkpoint without one (checked by its zip CRCs), never one that fails its checksum."""
    with stop.deferred():
        if os.path.exists(path + ".sha256"):
            os.remove(path + ".sha256")
        atomic_write(path, lambda f: torch.save(state, f), binary=True)
        atomic_write_text(path + ".sha256", f"{sha256_file(path)}  {os.path.basename(path)}\n")
        if update_last:
            folder = os.path.dirname(os.path.abspath(path))
            atomic_write_text(os.path.join(folder, LAST_CHECKPOINT_FILE), os.path.basename(path) + "\n")
    return path


def load_checkpoint(path: str, *, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises CheckpointError (one line, naming the file) if it is missing, fails its sha256 sidecar, cannot
    be unpickled (e.g. cut short), or is not a dict with a "model" entry.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: file not found")
    side = path + ".sha256"
    if verify and os.path.isfile(side):
        with open(side, encoding="utf-8") as f:
            parts = f.read().split()
            expected = parts[0] if parts else ""
        actual = sha256_file(path)
        if expected != actual:
            raise CheckpointError(
                f"checkpoint {path}: sha256 mismatch with {os.path.basename(side)} (file truncated or corrupt; "
                f"size {os.path.getsize(path)} bytes) - refusing to load it")
    elif verify:  # no sidecar (a copied file): the CRC-32 of every member that torch's zip format stores
        try:
            check_zip_crc(path)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {e} - refusing to load it") from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError for cut files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"checkpoint {path}: refused: it holds objects other than tensors and plain data "
                                  "(possibly code), which are never unpickled; not loaded") from None
        raise CheckpointError(f"checkpoint {path}: unreadable (truncated or corrupt?): {msg}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path}: expected a dict with a 'model' entry")
    return state


def find_last_checkpoint(output_dir: str) -> str | None:
    """Path of the newest checkpoint in ``output_dir`` (from ``last_checkpoint``, else the highest
    ``model_NNNNNNN.pth``), or None if there is none."""
    marker = os.path.join(output_dir, LAST_CHECKPOINT_FILE)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            name = f.read().strip()
        if name:
            path = os.path.join(output_dir, name)
            if not os.path.isfile(path):
                raise CheckpointError(f"{marker}: names {name}, which does not exist in {output_dir}")
            return path
    best, best_it = None, -1
    for p in glob.glob(os.path.join(output_dir, "model_*.pth")):
        m = _NAME_RE.match(os.path.basename(p))
        if m and int(m.group(1)) > best_it:
            best, best_it = p, int(m.group(1))
    return best
