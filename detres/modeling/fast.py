"""The fast inference path: an optimised copy of a C4 detector with the same calls and the same detections.

:func:`prepare_for_inference` takes a detector from :func:`detres.modeling.build_detector` and returns a
copy for evaluation and prediction (the given model is never changed: the trainer evaluates its live
training model). Each optimisation can be switched off, and all of them with ``enabled=False``:

- ``fold_bn``: every BatchNorm (frozen, or trainable in eval mode) that follows a convolution is folded
  into it: ``W' = W * s / sqrt(v + eps)``, ``b' = t - m * s / sqrt(v + eps)``. Exact up to rounding, and it
  removes a full read and write of every activation.
- ``channels_last``: trunk and per-RoI head run in NHWC, the layout oneDNN's convolutions use natively, so
  no layout conversion happens around each convolution.
- ``freeze``: the trunk and the head are traced and frozen with TorchScript
  (``torch.jit.freeze`` + ``optimize_for_inference``), which lets oneDNN fuse convolution, bias, addition and
  ReLU. Off by default: it is measured per machine in ``tools/benchmark.py infer``.
- ``roi_chunk``: the per-RoI conv5 head runs over chunks of this many RoIs, so that its activations stay in
  cache (None: all at once).
- ``pool_threads``: torchvision's CPU RoIAlign/RoIPool barely uses a second core; the RoIs are split over
  this many threads (the kernels release the GIL), with identical output. CPU only.
- ``commute_head``: RoIAlign as two matrix products, with the head's first 1x1 convolutions (a bottleneck's
  conv1 and its projection shortcut) run once on the shared map instead of once per RoI
  (:mod:`detres.modeling.roi_algebra`; exact up to rounding). ResNet-50/101/152 heads with RoIAlign only;
  CPU only.
- ``winograd``: 3x3 stride-1 convolutions with >= 128 input channels (ResNet's conv3-conv5 stages, the RPN's
  conv, VGG's conv3-conv5) by Winograd's F(4x4, 3x3) on maps up to 12k positions
  (:mod:`detres.modeling.winograd`; not bit-exact, about 1e-5 relative). CPU only (cuDNN chooses its own).
- ``bf16``: the head and trunk in bfloat16 autocast, only on a CPU with native bf16 arithmetic (AVX512-BF16 or
  AMX) or on CUDA; never emulated. Not exact: mAP changes by a fraction of a point.

The exact options give the same labels, boxes within 0.5 px and scores within 1e-3 of fp32 eager
(tests/test_fast_inference.py).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detres.config import FastConfig
from detres.modeling.winograd import replace_convs
from detres.utils.amp import autocast, cpu_has_native_bf16  # noqa: F401  (cpu_has_native_bf16: public here too)

__all__ = ["prepare_for_inference", "fold_batchnorm", "cpu_has_native_bf16", "FAST_DEFAULTS"]

logger = logging.getLogger(__name__)

#: The options used when a caller asks for the fast path without choosing: the defaults of the config's
#: ``test.fast`` section (:class:`detres.config.FastConfig`, where they are written once).
FAST_DEFAULTS: dict[str, Any] = dataclasses.asdict(FastConfig())

_BN_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) == x * scale + shift`` per channel, in eval mode."""
    mean, var, eps = bn.running_mean, bn.running_var, bn.eps
    weight = bn.weight if bn.weight is not None else torch.ones_like(mean)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    scale = weight / torch.sqrt(var + eps)
    return scale, bias - mean * scale


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new Conv2d (with bias) computing ``bn(conv(x))``."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    old_bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(old_bias * scale + shift)
    return fused


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a Conv2d into it, in place (eval-mode semantics).

    Pairs are found by name: ``convK`` + ``bnK`` on one module (detres's and torchvision's ResNet blocks and
    stem) and ``Sequential(Conv2d, BatchNorm, ...)`` (shortcut projections). The BN becomes ``nn.Identity``.
    Returns the number of folded pairs.
    """
    folded = 0
    for parent in list(module.modules()):
        for k in range(1, 4):
            conv, bn = getattr(parent, f"conv{k}", None), getattr(parent, f"bn{k}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _BN_TYPES):
                setattr(parent, f"conv{k}", _fold(conv, bn))
                setattr(parent, f"bn{k}", nn.Identity())
                folded += 1
        if isinstance(parent, nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Conv2d) and isinstance(parent[i + 1], _BN_TYPES):
                    parent[i] = _fold(parent[i], parent[i + 1])
                    parent[i + 1] = nn.Identity()
                    folded += 1
    return folded


class _ChannelsLast(nn.Module):
    """Runs ``module`` on an NHWC copy of a 4-D input (its weights are NHWC too)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x.contiguous(memory_format=torch.channels_last))


class _Autocast(nn.Module):
    """Runs ``module`` under bf16 autocast and returns float32 tensors."""

    def __init__(self, module: nn.Module, device_type: str):
        super().__init__()
        self.module, self.device_type = module, device_type

    def forward(self, x: torch.Tensor) -> Any:
        with autocast("bf16", self.device_type, cpu_bf16=True):  # utils/amp: the one precision policy
            out = self.module(x)
        if isinstance(out, dict):
            return type(out)((k, v.float()) for k, v in out.items())
        return out.float()


class _Frozen(nn.Module):
    """A traced and frozen TorchScript copy of ``module`` (oneDNN fusion); keeps the original's dict output."""

    def __init__(self, module: nn.Module, example: torch.Tensor, keys: tuple[str, ...] | None):
        super().__init__()
        self.keys = keys
        traced = torch.jit.trace(module, example, strict=False, check_trace=False)
        self.frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def forward(self, x: torch.Tensor) -> Any:
        out = self.frozen(x)
        if self.keys is None:
            return out
        from collections import OrderedDict
        return OrderedDict((k, out[k]) for k in self.keys)


def prepare_for_inference(model: nn.Module, *, device: str | torch.device = "cpu", enabled: bool = True,
                          fold_bn: bool | None = None, channels_last: bool | None = None, freeze: bool | None = None,
                          roi_chunk: int | None = None, bf16: bool | None = None,
                          pool_threads: int | None = None, commute_head: bool | None = None,
                          winograd: bool | None = None) -> nn.Module:
    """An optimised copy of the C4 detector ``model`` in eval mode on ``device`` (see the module docstring).

    Options left as None take :data:`FAST_DEFAULTS`; ``bf16=True`` is ignored (with a log line) on a CPU
    without native bf16. ``enabled=False`` returns a plain eval-mode copy. Call signature and outputs are
    ``model``'s: ``model(list of [3, H, W] float RGB in [0, 1]) -> [{"boxes", "labels", "scores"}]``.
    """
    device = torch.device(device)
    fast = copy.deepcopy(model).eval().to(device)
    if not enabled:
        return fast
    opts = _fast_options(device, dict(fold_bn=fold_bn, channels_last=channels_last, freeze=freeze,
                                      roi_chunk=roi_chunk, bf16=bf16, pool_threads=pool_threads,
                                      commute_head=commute_head, winograd=winograd))
    if opts["fold_bn"]:
        fold_batchnorm(fast.backbone)
        fold_batchnorm(fast.roi_heads.box_head)
    heads = fast.roi_heads  # a C4RoIHead: the head's options are its own methods
    # freeze traces the trunk and head with a probe: it keeps the ordinary head and convolutions
    # CPU only: on CUDA the per-RoI products (a Python loop, a host sync) were never measured against cuDNN
    commuted = (opts["commute_head"] and device.type == "cpu" and opts["fold_bn"] and not opts["freeze"]
                and heads.can_commute())
    if commuted:
        heads.commute_first_block(opts["channels_last"])
    if opts["winograd"] and device.type == "cpu" and not opts["freeze"]:
        for part in (fast.backbone, fast.rpn.head, heads):
            replace_convs(part)
    trunk = fast.backbone
    if opts["freeze"]:
        if opts["bf16"]:
            raise ValueError("freeze and bf16 cannot be combined in the fast path")
        trunk, heads.box_head = _freeze_trunk_and_head(fast, opts["channels_last"], device)
    if opts["channels_last"]:
        trunk = _ChannelsLast(trunk)
        fast.rpn.head.to(memory_format=torch.channels_last)  # it reads the trunk's NHWC map
    if opts["bf16"]:
        trunk = _Autocast(trunk, device.type)
    heads.set_fast(channels_last=opts["channels_last"], roi_chunk=opts["roi_chunk"],
                   pool_threads=opts["pool_threads"] if device.type == "cpu" and not commuted else 1,
                   bf16_device=device.type if opts["bf16"] else None)
    if trunk is not fast.backbone:
        trunk.out_channels = fast.backbone.out_channels  # torchvision and detres read it
    fast.backbone = trunk
    fast.inference_options = opts
    return fast


def _fast_options(device: torch.device, given: dict[str, Any]) -> dict[str, Any]:
    """:data:`FAST_DEFAULTS` updated with the ``given`` options that are not None; bf16 dropped (with a log
    line) on a CPU without native bf16. ValueError for a ``roi_chunk`` under 1."""
    opts = dict(FAST_DEFAULTS)
    opts.update({k: v for k, v in given.items() if v is not None})
    if opts["bf16"] and device.type == "cpu" and not cpu_has_native_bf16():
        logger.info("fast path: bf16 skipped, this CPU has no native bf16 (it would be emulated)")
        opts["bf16"] = False
    if opts["roi_chunk"] is not None and opts["roi_chunk"] < 1:
        raise ValueError(f"roi_chunk must be >= 1 or None, got {opts['roi_chunk']}")
    return opts


def _freeze_trunk_and_head(fast: nn.Module, channels_last: bool, device: torch.device
                           ) -> tuple[nn.Module, nn.Module]:
    """``(trunk, head)`` of ``fast`` traced and frozen (:class:`_Frozen`) with random probes: a
    ``[1, 3, 64, 64]`` image for the trunk, two pooled RoIs ``[2, C, S, S]`` for the head."""
    trunk, head = fast.backbone, fast.roi_heads.box_head
    with torch.no_grad():
        if channels_last:
            trunk, head = trunk.to(memory_format=torch.channels_last), head.to(memory_format=torch.channels_last)
        probe = torch.rand(1, 3, 64, 64, device=device)
        keys = tuple(trunk(probe).keys())
        channels = next(iter(trunk(probe).values())).shape[1]
        trunk_in = probe.contiguous(memory_format=torch.channels_last) if channels_last else probe
        trunk = _Frozen(trunk, trunk_in, keys)
        head_in = torch.rand(2, channels, fast.roi_heads.box_roi_pool.output_size,
                             fast.roi_heads.box_roi_pool.output_size, device=device)
        if channels_last:
            head_in = head_in.contiguous(memory_format=torch.channels_last)
        head = _Frozen(head, head_in, None)
    return trunk, head
