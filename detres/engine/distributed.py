"""torch.distributed helpers: init from torchrun's environment, rank queries, reductions, DDP wrapping.

Launch with ``torchrun --nproc_per_node=N tools/train_det.py ...``; NCCL is used on GPUs, gloo on CPU.
Without torchrun's variables everything runs as a single process (world size 1).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
           "barrier", "reduce_dict", "all_reduce_flag", "broadcast_object", "wrap_model", "unwrap_model",
           "convert_sync_bn", "destroy_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(*, device: str | None = None, timeout_s: int = 1800) -> torch.device:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); return this rank's device.

    ``device``: "cuda" | "cpu" | None (CUDA if available). Backend: NCCL for CUDA, gloo for CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if device.startswith("cuda"):
        torch.cuda.set_device(get_local_rank())
        dev = torch.device("cuda", get_local_rank())
    else:
        dev = torch.device("cpu")
    if world > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dev


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def reduce_dict(values: dict[str, torch.Tensor], *, average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (same keys on every rank); detached copies are returned."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if is_distributed():
        dist.all_reduce(stacked)
        if average:
            stacked /= get_world_size()
    return {k: v for k, v in zip(keys, stacked)}


def all_reduce_flag(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Replace trainable BatchNorm layers by SyncBatchNorm (only meaningful under DDP; FrozenBN is untouched)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when the process group is up; otherwise return ``model``."""
    if not is_distributed():
        return model
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index], output_device=device.index,
                                                   find_unused_parameters=find_unused_parameters)
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
