"""The one mixed-precision policy, used by training, evaluation and the benchmarks.

``amp`` is ``None`` (fp32), ``"bf16"`` or ``"fp16"``. Mixed precision is for GPUs: on CUDA the forward
pass runs under ``torch.autocast`` with that dtype (fp16 also needs a GradScaler, see :func:`needs_grad_scaler`);
on the CPU the setting is ignored and everything stays fp32, because CPUs without native bf16 only
emulate it (slower, and less accurate) and CPU autocast has no fp16. A config written for GPUs therefore
runs unchanged on a laptop. The one exception is opt-in and inference only: ``cpu_bf16=True`` (the fast
inference path's ``test.fast.bf16``) runs bf16 on a CPU that computes it natively (AVX512-BF16 or AMX).
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

__all__ = ["AMP_DTYPES", "check_amp", "autocast", "needs_grad_scaler", "effective_amp", "cpu_has_native_bf16"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_logged: set[tuple[str, str]] = set()


def check_amp(amp: str | None) -> str | None:
    """``amp`` if it is None, "bf16" or "fp16"; ValueError otherwise."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"solver.amp must be 'bf16', 'fp16' or null, got {amp!r}")
    return amp


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); bf16 elsewhere is emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def effective_amp(amp: str | None, device: torch.device | str, *, cpu_bf16: bool = False) -> str | None:
    """The precision that actually runs on ``device``: ``amp`` on CUDA, None (fp32) elsewhere, except bf16
    on a CPU with native bf16 when the caller opts in with ``cpu_bf16`` (inference only)."""
    check_amp(amp)
    device = torch.device(device)
    if cpu_bf16 and amp == "bf16" and device.type == "cpu" and cpu_has_native_bf16():
        return amp
    if amp is not None and device.type != "cuda":
        if (amp, device.type) not in _logged:
            _logged.add((amp, device.type))
            logging.getLogger("detres").info("amp=%s ignored on %s: mixed precision runs on CUDA only", amp,
                                             device.type)
        return None
    return amp


def autocast(amp: str | None, device: torch.device | str, *, cpu_bf16: bool = False
             ) -> contextlib.AbstractContextManager:
    """``torch.autocast`` with ``amp``'s dtype where :func:`effective_amp` lets it run; a no-op otherwise."""
    amp = effective_amp(amp, device, cpu_bf16=cpu_bf16)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


def needs_grad_scaler(amp: str | None, device: torch.device | str) -> bool:
    """fp16 on CUDA: gradients are scaled so small values do not underflow."""
    return effective_amp(amp, device) == "fp16"
