"""The one mixed-precision policy, used by training, evaluation and the benchmarks.

``amp`` is ``None`` (fp32), ``"bf16"`` or ``"fp16"``. Mixed precision is for GPUs: on CUDA the forward
pass runs under ``torch.autocast`` with that dtype (fp16 also needs a GradScaler, see :func:`needs_grad_scaler`);
on the CPU the setting is ignored and everything stays fp32, because CPUs without native bf16 only
emulate it (slower, and less accurate) and CPU autocast has no fp16. A config written for GPUs therefore
runs unchanged on a laptop.
"""
from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["AMP_DTYPES", "check_amp", "autocast", "needs_grad_scaler", "effective_amp"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_logged: set[tuple[str, str]] = set()


def check_amp(amp: str | None) -> str | None:
    """``amp`` if it is None, "bf16" or "fp16"; ValueError otherwise."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"solver.amp must be 'bf16', 'fp16' or null, got {amp!r}")
    return amp


def effective_amp(amp: str | None, device: torch.device | str) -> str | None:
    """The precision that actually runs on ``device``: ``amp`` on CUDA, None (fp32) elsewhere."""
    check_amp(amp)
    device = torch.device(device)
    if amp is not None and device.type != "cuda":
        if (amp, device.type) not in _logged:
            _logged.add((amp, device.type))
            logging.getLogger("detres").info("amp=%s ignored on %s: mixed precision runs on CUDA only", amp,
                                             device.type)
        return None
    return amp


def autocast(amp: str | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` with ``amp``'s dtype on CUDA; a no-op for ``amp=None`` or a CPU device."""
    amp = effective_amp(amp, device)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[amp])


def needs_grad_scaler(amp: str | None, device: torch.device | str) -> bool:
    """fp16 on CUDA: gradients are scaled so small values do not underflow."""
    return effective_amp(amp, device) == "fp16"
