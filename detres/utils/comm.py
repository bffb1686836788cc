"""torch.distributed helpers: init from torchrun's environment, rank queries, reductions, gathers, DDP.

Launch with ``torchrun --nproc_per_node=N ...``: NCCL is used on GPUs, gloo on the CPU. Without
torchrun's variables everything runs as one process (rank 0, world size 1) and every helper here is a
cheap no-op, so the same code serves both cases.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from detres.utils.cli import RunFault

__all__ = ["init_distributed", "destroy_distributed", "is_distributed", "get_rank", "get_world_size",
           "get_local_rank", "is_main_process", "resolve_rank_world", "barrier", "reduce_dict", "all_reduce_flag",
           "all_reduce_sum", "all_gather_objects", "broadcast_object", "wrap_model", "unwrap_model",
           "convert_sync_bn", "heartbeat", "peer_failure"]


def is_distributed() -> bool:
    """True when a process group is up (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """This process's GPU index on its node (torchrun's ``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0: the process that logs and writes files."""
    return get_rank() == 0


def resolve_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else torch.distributed's, else ``(0, 1)``."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def init_distributed(*, device: str | None = None, timeout_s: int = 1800) -> torch.device:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1); return this rank's device.

    ``device``: "cuda" | "cpu" | None (CUDA when available). Backend: NCCL for CUDA, gloo for the CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if device.startswith("cuda"):
        torch.cuda.set_device(get_local_rank())
        dev = torch.device("cuda", get_local_rank())
    else:
        dev = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        try:
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=timeout_s), **_restart_store(timeout_s))
        except (RuntimeError, TimeoutError) as e:  # DistBackendError, DistStoreError: a peer or the store is gone
            first = " ".join(str(e).split())[:200]
            raise RunFault(f"rank {os.environ.get('RANK')}: could not join the process group of "
                           f"{os.environ.get('WORLD_SIZE')} ranks at {os.environ.get('MASTER_ADDR')}:"
                           f"{os.environ.get('MASTER_PORT')} (solver.dist_timeout {timeout_s} s): {first}") from e
    return dev


def _restart_store(timeout_s: int) -> dict:
    """``{"store", "rank", "world_size"}`` for ``init_process_group`` when torchrun restarted this group on one node,
    else ``{}`` (torch's env:// rendezvous).

    Why: torchrun's agent hosts one TCPStore for the whole job and hands it to every attempt without a
    per-attempt prefix (torch/distributed/rendezvous.py ``_create_c10d_store``: "We create a new TCPStore for
    every retry so no need to add prefix", while ``DynamicRendezvousHandler.next_rendezvous`` keeps its
    ``_shared_tcp_store_server`` across rounds; pytorch/pytorch#135712). A restarted rank can then read the
    dead attempt's keys, e.g. gloo's address of a peer that is gone, and wait for it in
    ``init_process_group`` until the timeout (3 restarts in 8 in issue 26). ``TORCHELASTIC_RESTART_COUNT`` is
    the same for every worker of one agent, so on one node it names the attempt; across nodes it is not
    (each agent counts its own restarts), and there ``python -m detres.utils.launch`` (or
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun) gives every attempt a fresh store."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart is None
            or os.environ.get("GROUP_WORLD_SIZE", "1") != "1"):
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return {"store": dist.PrefixStore(f"detres/attempt_{restart}", store), "rank": int(os.environ["RANK"]),
            "world_size": int(os.environ["WORLD_SIZE"])}


_HEARTBEAT = "detres/iteration/{}"
_FAILED = "detres/collective_failed/{}"
#: Words of the backends' errors when a peer did not answer in time or went away.
_PEER_FAILURE = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")


def heartbeat(iteration: int) -> None:
    """Record in the process group's store that this rank has completed ``iteration`` iterations, so that a
    rank whose collective times out can say which rank is behind (:func:`peer_failure`). A cheap no-op alone."""
    if not is_distributed():
        return
    try:
        dist.distributed_c10d._get_default_store().set(_HEARTBEAT.format(get_rank()), str(int(iteration)))
    except Exception:  # noqa: BLE001 - the store is gone too: the collective will say so
        pass


def _unanswered(grace_s: float) -> tuple[list[int], dict[int, int]]:
    """(the ranks that do not report a failed collective within ``grace_s`` seconds, ``{rank: iterations
    completed}``). Every rank whose collective failed reports itself in the store; a rank that stopped
    answering (hung, stopped, dead) cannot, so it is the one missing."""
    store = dist.distributed_c10d._get_default_store()
    store.set_timeout(timedelta(seconds=10))
    store.set(_FAILED.format(get_rank()), "1")
    others = [r for r in range(get_world_size()) if r != get_rank()]
    end = time.monotonic() + grace_s
    while True:
        missing = [r for r in others if not store.check([_FAILED.format(r)])]
        if not missing or time.monotonic() > end:
            break
        time.sleep(0.2)
    done = {r: int(store.get(_HEARTBEAT.format(r)).decode()) for r in range(get_world_size())
            if store.check([_HEARTBEAT.format(r)])}
    return missing, done


def peer_failure(exc: BaseException, *, timeout_s: float | None = None, grace_s: float | None = None) -> str | None:
    """A one-line account of a collective that failed because another rank did not answer (``exc`` is the
    backend's error), naming the rank(s) that did not report the failure themselves within ``grace_s`` (default:
    a quarter of ``timeout_s``, 2 to 15 s: the healthy ranks time out together) and the iterations each rank
    completed; None when ``exc`` is something else or the run is not distributed."""
    text = str(exc).lower()
    if not is_distributed() or not any(w in text for w in _PEER_FAILURE):
        return None
    if grace_s is None:
        grace_s = min(15.0, max(2.0, (timeout_s or 60.0) / 4))
    try:
        missing, done = _unanswered(grace_s)
    except Exception:  # noqa: BLE001 - the store's host is gone (rank 0 outside torchrun)
        missing, done = [], {}
    progress = ", ".join(f"rank {r}: {it}" for r, it in sorted(done.items()))
    who = (f"rank(s) {', '.join(map(str, missing))} stopped answering" if missing
           else "another rank stopped answering or died") + (f" (iterations completed: {progress})" if progress else "")
    waited = f" (solver.dist_timeout {timeout_s:g} s)" if timeout_s else ""
    first = " ".join(str(exc).split())[:200]
    return (f"rank {get_rank()}: a collective failed{waited}: {who}; backend: {first}. Continue from the last "
            "checkpoint with --resume (under torchrun --max-restarts N this happens by itself)")


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where tensors must live for a collective: the current GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_dict(values: dict[str, torch.Tensor], *, average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (same keys on every rank); detached copies come back."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if is_distributed():
        stacked = stacked.to(_collective_device())
        dist.all_reduce(stacked)
        if average:
            stacked /= get_world_size()
    return dict(zip(keys, stacked))


def all_reduce_flag(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t)
    return bool(t.item() > 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over all ranks, on ``t``'s device (``t`` itself when alone)."""
    if not is_distributed():
        return t
    out = t.to(_collective_device())
    dist.all_reduce(out)
    return out.to(t.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Trainable BatchNorm -> SyncBatchNorm (statistics over all processes); FrozenBN is left alone."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel when the process group is up; otherwise ``model`` itself."""
    if not is_distributed():
        return model
    ids = dict(device_ids=[device.index], output_device=device.index) if device.type == "cuda" else {}
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters, **ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
