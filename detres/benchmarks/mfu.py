"""Model FLOPs utilisation: the FLOPs a step needs, divided by its time and by the GPU's dense peak.

FLOPs are counted by ``torch.utils.flop_counter`` on the step that runs (forward and backward, 2 FLOPs per
multiply-add), so they follow the model, not a formula. Peaks are the vendors' dense (no sparsity) tensor
figures per GPU; an unknown device gives None and the MFU is left out rather than guessed.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["GPU_PEAK_TFLOPS", "gpu_peak_tflops", "step_flops", "mfu"]

#: (name fragment, lower-case, most specific first) -> dense peak TFLOP/s per dtype.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("h200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("h100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM ("H100 80GB HBM3")
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("l40s", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("rtx 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
]


def gpu_peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of ``device_name`` (``torch.cuda.get_device_name``) for ``dtype`` in {bf16, fp16,
    tf32, fp32}; None for a device not in :data:`GPU_PEAK_TFLOPS`."""
    name = device_name.lower()
    for fragment, peaks in GPU_PEAK_TFLOPS:
        if fragment in name:
            if dtype not in peaks:
                raise ValueError(f"dtype {dtype!r}: choose from {list(peaks)}")
            return peaks[dtype]
    return None


def step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step: ``step()`` returns the loss, whose backward is counted too."""
    with FlopCounterMode(display=False) as counter:
        step().backward()
    return int(counter.get_total_flops())


def mfu(flops: int, seconds: float, peak_tflops: float | None) -> float | None:
    """Achieved FLOP/s over the peak (None when the peak is unknown)."""
    if peak_tflops is None or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)
