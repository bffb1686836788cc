"""What both tasks share: the solver read from ``cfg.solver`` and a training run with the default hooks.

Both schemas (:class:`~detres.config.DetConfig`, :class:`~detres.config.ClsConfig`) name these fields
alike: ``solver.{base_lr, momentum, weight_decay, ims_per_batch, iter_size, reference_batch, batch_rule, steps,
gamma, warmup_iters, warmup_factor, max_iter, checkpoint_period, log_period, clip_grad_norm, amp}``,
``test.eval_period`` and ``output_dir``.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

try:
    import fcntl
except ImportError:  # Windows: the pid check alone
    fcntl = None  # type: ignore[assignment]

import torch
from torch import nn

from detres.config import CONFIG_SCHEMAS, config_to_dict, load_config, save_config
from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint
from detres.engine.hooks import CheckpointHook, EvalHook, MetricsHook
from detres.engine.logging import MetricsWriter, setup_logger
from detres.engine.solver import build_sgd, build_warmup_multistep, scale_lr
from detres.engine.trainer import HookBase, Trainer
from detres.evaluation.plots import plot_training_curves
from detres.utils import comm
from detres.utils.io import atomic_write_text

__all__ = ["read_config", "check_choice", "BATCH_RULES", "BatchPlan", "resolve_batch", "check_accumulation",
           "scaled_lr", "warmup_iters", "build_solver", "check_output_dir",
           "prepare_output_dir", "acquire_run_lock", "release_run_lock", "start_run", "run_training",
           "AUTO_WARMUP_ITERS", "LOCK_FILE"]

logger = logging.getLogger("detres")


def read_config(path: str | os.PathLike, overrides: Iterable[str] = (), *, task: str | None = None,
                allow_empty: bool = False) -> Any:
    """The config a tool (or a benchmark) runs: the YAML ``path`` with ``key.sub=value`` ``overrides``, read
    with the schema of ``task`` ("detection" | "classification"; None: the file's ``task`` key). The tools
    and benchmarks get their config here and hand it to ``detres.tasks`` without reading its fields (only
    ``detres/tasks/`` reads a config; tests/test_architecture.py checks it). ``allow_empty=False`` refuses a file
    without keys. ValueError names the file and key."""
    schema = CONFIG_SCHEMAS[task] if task is not None else None
    return load_config(path, list(overrides), schema, task=task, allow_empty=allow_empty)


def check_choice(key: str, value: Any, choices) -> Any:
    """``value`` if it is one of ``choices``; else ValueError naming the config key and the choices."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"config key '{key}': must be one of {choices}, got {value!r}")
    return value


#: Length of the automatic warmup (``solver.warmup_iters: null`` when the scaling rule raises the rate):
#: detectron2's 1000 iterations, at most a tenth of the run.
AUTO_WARMUP_ITERS = 1000


#: ``solver.batch_rule`` values: how a total batch other than ``solver.reference_batch`` is handled.
BATCH_RULES = ("linear_scaling", "accumulate")


@dataclass(frozen=True)
class BatchPlan:
    """How one update is made: ``processes`` x ``ims_per_batch`` images per forward pass x ``iter_size``
    passes accumulated = ``total`` images, at the rate ``lr`` (``solver.base_lr`` x total / reference)."""
    rule: str
    processes: int
    ims_per_batch: int
    iter_size: int
    total: int
    reference: int
    lr: float


def resolve_batch(cfg: Any, world_size: int | None = None) -> BatchPlan:
    """The update ``cfg.solver`` asks for on ``world_size`` processes (None: the current world).

    ``solver.batch_rule: linear_scaling``: ``solver.iter_size`` as configured; the rate is multiplied by
    ``(processes x ims_per_batch x iter_size) / reference_batch`` (Goyal et al. 2017), iterations unchanged.
    ``accumulate`` (the paper configs): the update keeps ``reference_batch`` images, so the rate and the
    iterations stay the paper's: ``iter_size = reference_batch / (processes x ims_per_batch)``, e.g. coco_r101
    (16 = 8 x 1 x 2 in the paper) on 1 process -> 16. Where that is no whole number >= 1 (more images per pass
    than the reference, or a remainder), ``iter_size`` is rounded up and the rest of the difference is scaled
    linearly. ValueError names a wrong ``solver.batch_rule``."""
    s = cfg.solver
    rule = check_choice("solver.batch_rule", s.batch_rule, BATCH_RULES)
    n = comm.get_world_size() if world_size is None else int(world_size)
    per_pass = n * s.ims_per_batch
    k = max(1, -(-s.reference_batch // per_pass)) if rule == "accumulate" else s.iter_size
    total = per_pass * k
    lr = scale_lr(s.base_lr, total_batch=total, reference_batch=s.reference_batch)
    return BatchPlan(rule=rule, processes=n, ims_per_batch=s.ims_per_batch, iter_size=k, total=total,
                     reference=s.reference_batch, lr=lr)


def scaled_lr(cfg: Any, world_size: int | None = None) -> tuple[float, int]:
    """(the rate of :func:`resolve_batch`, the total batch per update): with ``solver.batch_rule:
    linear_scaling`` ``solver.base_lr`` x ``(processes x solver.ims_per_batch x solver.iter_size) /
    solver.reference_batch``; with ``accumulate`` ``solver.base_lr`` wherever accumulation reaches the reference."""
    plan = resolve_batch(cfg, world_size)
    return plan.lr, plan.total


def warmup_iters(cfg: Any, lr: float) -> int:
    """``solver.warmup_iters``, or, when it is None, a warmup of :data:`AUTO_WARMUP_ITERS` (at most a
    tenth of ``max_iter``) if the linear scaling rule raised the rate above ``base_lr``, else none."""
    s = cfg.solver
    if s.warmup_iters is not None:
        return s.warmup_iters
    if lr > s.base_lr:
        n = max(1, min(AUTO_WARMUP_ITERS, s.max_iter // 10))
        logger.info("linear scaling raised the learning rate above solver.base_lr (%.6g -> %.6g): warming up "
                    "linearly over %d iterations from %g x (solver.warmup_iters=null; set it to 0 to disable)",
                    s.base_lr, lr, n, s.warmup_factor)
        return n
    return 0


def check_accumulation(model: nn.Module, plan: BatchPlan) -> None:
    """Refuse or warn where accumulating ``plan.iter_size`` passes is not the paper's larger batch.

    With frozen BN (the paper's detectors, ResNet App. A), GroupNorm or no normalisation each image's gradient
    does not depend on the other images of the update: accumulation is exact. Trainable BN (``bn``) takes its
    batch statistics from each pass's ``ims_per_batch`` images, as the paper's per-GPU BN did from each GPU's,
    but updates its running mean/variance once per pass (``iter_size`` times per update): warned.
    SyncBatchNorm (``syncbn``) would reduce over the paper's processes x images; with fewer processes its
    batch is ``iter_size`` times smaller: refused (ValueError), use ``solver.batch_rule=linear_scaling``."""
    if plan.rule != "accumulate" or plan.iter_size == 1:
        return
    bns = [m for m in comm.unwrap_model(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(isinstance(m, nn.SyncBatchNorm) for m in bns):
        raise ValueError(f"config key 'solver.batch_rule': accumulate ({plan.iter_size} passes per update) cannot "
                         f"reproduce SyncBatchNorm's batch: its statistics would span {plan.processes} x "
                         f"{plan.ims_per_batch} images instead of the reference's {plan.reference}; set "
                         "solver.batch_rule=linear_scaling or model.backbone.norm=frozen_bn")
    if bns:
        logger.warning("solver.batch_rule accumulate with trainable BatchNorm: the gradients are those of %d "
                       "images with per-pass batch statistics of %d image(s), but the running mean/variance are "
                       "updated %d times per update instead of once, so the statistics used at test differ from "
                       "the reference's; frozen BN (the paper's detectors) is exact", plan.total,
                       plan.ims_per_batch, plan.iter_size)


def build_solver(cfg: Any, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum, weight decay) at the rate of :func:`resolve_batch` (``solver.batch_rule``), and the
    per-iteration warmup + multi-step schedule. Logs the update it makes and the scaling it applied; the
    caller accumulates ``resolve_batch(cfg).iter_size`` passes per update."""
    s = cfg.solver
    plan = resolve_batch(cfg)
    check_accumulation(model, plan)
    lr = plan.lr
    if plan.rule == "accumulate":
        what = "paper update" if plan.total == plan.reference else "update"
        logger.info("%s: %d images = %d processes x %d x accumulation %d (solver.batch_rule accumulate; "
                    "solver.reference_batch %d)", what, plan.total, plan.processes, plan.ims_per_batch,
                    plan.iter_size, plan.reference)
        if plan.iter_size != s.iter_size:
            logger.info("solver.iter_size %d -> %d: the reference batch of %d images on %d process(es)",
                        s.iter_size, plan.iter_size, plan.reference, plan.processes)
    if plan.total != plan.reference:
        logger.info("linear scaling rule: total batch %d (%d process(es) x %d images x iter_size %d) vs reference %d "
                    "-> lr %.6g x %d/%d = %.6g", plan.total, plan.processes, plan.ims_per_batch, plan.iter_size,
                    plan.reference, s.base_lr, plan.total, plan.reference, lr)
    else:
        logger.info("learning rate %.6g (total batch %d = solver.reference_batch, no scaling)", lr, plan.total)
    optimizer = build_sgd(comm.unwrap_model(model), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay,
                          bias_lr_factor=s.bias_lr_factor, weight_decay_bias=s.weight_decay_bias,
                          momentum_style=s.momentum_style)
    scheduler = build_warmup_multistep(optimizer, steps=s.steps, gamma=s.gamma, warmup_iters=warmup_iters(cfg, lr),
                                       warmup_factor=s.warmup_factor, warmup_method=s.warmup_method)
    return optimizer, scheduler


#: THE table of what a run writes into its output_dir (``LOCK_FILE`` aside), each entry with its kind:
#: ``result`` is what a run that produced something leaves (a fresh run refuses a folder holding one: an empty
#: metrics.jsonl, config.yaml, log.txt and TensorBoard's first file are what a run that failed at its start leaves,
#: and are replaced); ``run`` is bookkeeping. A name ending in ``/`` is a folder. All of it goes with --overwrite.
#: A new file a run writes gets one line here, and only here.
RUN_OUTPUTS: dict[str, str] = {
    "model_*.pth": "result", "model_*.pth.sha256": "run", "last_checkpoint": "run",
    "metrics.jsonl": "result", "eval.json": "result", "log.txt": "run", "config.yaml": "run",
    "events.out.tfevents.*": "run", "*.tmp.*": "run",
    "training_curves.png": "result", "pr_curves.png": "result",
    "results/": "result",  # VOC/COCO results files
    "results.tar.gz": "result",  # the VOC evaluation server's archive beside results/ (test.has_labels: false)
    "vis/": "result",  # detection pictures
}
RUN_FILES = tuple(p for p in RUN_OUTPUTS if not p.endswith("/"))
RUN_FOLDERS = tuple(p.rstrip("/") for p in RUN_OUTPUTS if p.endswith("/"))
_RESULT_FILES = tuple(p for p in RUN_FILES if RUN_OUTPUTS[p] == "result")
LOCK_FILE = "run.lock"


def _earlier_results(out: Path) -> list[str]:
    found = []
    for pattern in _RESULT_FILES:
        for p in sorted(out.glob(pattern)):
            if p.is_file() and (p.name != "metrics.jsonl" or p.stat().st_size > 0):
                found.append(p.name)
    for name in RUN_FOLDERS:
        if (out / name).is_dir() and any((out / name).iterdir()):
            found.append(f"{name}/")
    return found


def _remove_run_files(out: Path) -> None:
    for pattern in RUN_FILES:
        for p in out.glob(pattern):
            if p.is_file() or p.is_symlink():
                p.unlink()
    for name in RUN_FOLDERS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)


def check_output_dir(cfg: Any, *, inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                     resume: bool = False) -> None:
    """Refuse an ``output_dir`` where the run would replace or delete what it reads.

    ``inputs`` (the config file) that have the name of a run file in output_dir (``config.yaml``, ...) would be
    replaced: refused unless ``overwrite`` or ``resume`` (the run's own saved config, read again).
    ``model.backbone.weights`` named like a checkpoint in output_dir would be deleted by ``overwrite`` first:
    refused then. output_dir being a data folder (``data.root``, ``data.image_root``) is always refused."""
    out = Path(cfg.output_dir).resolve()
    model, data = getattr(cfg, "model", None), getattr(cfg, "data", None)

    def run_file(p: str | os.PathLike) -> Path | None:
        path = Path(p).resolve()
        return path if path.parent == out and any(path.match(pattern) for pattern in RUN_FILES) else None

    for p in inputs:
        path = run_file(p) if p else None
        if path is not None and not (overwrite or resume):
            raise ValueError(f"output_dir {cfg.output_dir}: the run would overwrite {path.name}, which it reads; "
                             "choose another output_dir (or --resume / --overwrite to continue or redo that run)")
    weights = getattr(getattr(model, "backbone", None), "weights", None)
    path = run_file(weights) if weights else None
    if path is not None and overwrite:
        raise ValueError(f"output_dir {cfg.output_dir}: --overwrite would delete {path.name}, which the run reads "
                         "(model.backbone.weights); copy it elsewhere or choose another output_dir")
    for key in ("root", "image_root"):
        folder = getattr(data, key, None)
        if folder and Path(folder).resolve() == out:
            raise ValueError(f"output_dir {cfg.output_dir}: is the data folder (data.{key}); choose another output_dir")


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Protect finished work: a fresh run refuses a folder that holds an earlier run's results (checkpoints,
    eval.json, metrics, pictures, results/ or vis/) unless ``overwrite`` (which removes the earlier run's
    files first); what a run that failed at its start left (config.yaml, log.txt, an empty metrics.jsonl) is
    replaced. ``resume`` removes temporary files left by a write that was killed. Rank 0 only."""
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: output_dir exists and is not a folder")
    if resume:
        for tmp in out.glob("*.tmp.*"):
            logger.info("removing %s, left by a write that was interrupted", tmp)
            tmp.unlink()
        return
    earlier = _earlier_results(out)
    if earlier and not overwrite:
        raise ValueError(f"{out}: holds an earlier run's files ({', '.join(earlier[:4])}"
                         f"{', ...' if len(earlier) > 4 else ''}); pass --resume to continue it, --overwrite to "
                         "replace it, or choose another output_dir")
    _remove_run_files(out)
    if earlier:
        logger.warning("--overwrite: removed the earlier run's files from %s", out)


# --------------------------------------------------------------------------------------------------
# one run per output_dir
# --------------------------------------------------------------------------------------------------
#: This process's run locks: resolved lock path -> the open file holding its flock.
_held_locks: dict[str, int] = {}


def _process_start_time(pid: int) -> float | None:
    """Unix time at which process ``pid`` started (Linux /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder_alive(info: dict) -> bool:
    """Whether the process a lock names may still run: another host's cannot be checked (assumed alive); on
    this host its pid must run a process that started before the lock was taken (else the pid was reused)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or not _pid_alive(pid):
        return False
    started, taken = _process_start_time(pid), info.get("time")
    return not (started is not None and isinstance(taken, (int, float)) and started > float(taken) + 2.0)


def _read_lock(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16).decode("utf-8") or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder(info: dict) -> str:
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


def acquire_run_lock(output_dir: str | os.PathLike) -> Path:
    """Take ``output_dir/run.lock`` for this process (creating the folder): an ``flock`` held while the process
    lives, and the holder's pid, host and start time written in the file for people and other hosts.

    A lock held by a live run is a ValueError naming its holder (a run on another host too: its pid cannot
    be checked from here). A stale one (its process is gone, or its pid now runs a younger process) is taken
    over with a warning. This process's own lock (a second run in one Python session) is kept. Released at
    exit or by :func:`release_run_lock`."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output_dir exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    path = out / LOCK_FILE
    key = str(path.resolve())
    if key in _held_locks:
        return path
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": " ".join(sys.argv)[:500]}
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live process holds it
                    raise ValueError(f"{out}: another run is using this output_dir ({_holder(_read_lock(fd))}; "
                                     f"{path.name}); wait for it or choose another output_dir") from None
                except OSError:  # a file system without flock: the pid check below still applies
                    pass
            try:  # the file we locked may have been removed by its holder's exit meanwhile: lock the new one
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            info = _read_lock(fd)
            if info and (info.get("pid"), info.get("host")) != (me["pid"], me["host"]):
                if _holder_alive(info):
                    other = info.get("host") != me["host"]
                    raise ValueError(f"{out}: another run is using this output_dir ({_holder(info)}; {path.name}); "
                                     f"wait for it, choose another output_dir, or, if that run is gone"
                                     f"{' (it runs on another machine)' if other else ''}, delete {path}")
                logger.warning("%s: taking over the lock of a run that is gone (%s)", path, _holder(info))
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        _held_locks[key] = fd
        return path
    raise ValueError(f"{path}: could not take the run lock (other runs keep taking it)")


def release_run_lock(output_dir: str | os.PathLike | None = None) -> None:
    """Remove and unlock this process's run lock(s) (of ``output_dir``, or all); another process's is left."""
    keys = [str((Path(output_dir) / LOCK_FILE).resolve())] if output_dir is not None else list(_held_locks)
    for key in keys:
        fd = _held_locks.pop(key, None)
        if fd is None:
            continue
        try:
            if _read_lock(fd).get("pid") == os.getpid() and os.stat(key).st_ino == os.fstat(fd).st_ino:
                os.remove(key)
        except OSError:
            pass
        finally:
            os.close(fd)


atexit.register(release_run_lock)


def start_run(cfg: Any, *, device: str | None, resume: bool = False, overwrite: bool = False) -> torch.device:
    """Join torchrun's process group (if any), take the output folder's run lock and check the folder (see
    :func:`acquire_run_lock`, :func:`check_output_dir` and :func:`prepare_output_dir`), log to
    ``output_dir/log.txt`` on rank 0 and save the merged config there as ``config.yaml`` (loadable again).
    Returns this process's device."""
    if not (isinstance(cfg.solver.dist_timeout, int) and cfg.solver.dist_timeout >= 1):
        raise ValueError(f"config key 'solver.dist_timeout': must be a whole number of seconds >= 1, got "
                         f"{cfg.solver.dist_timeout!r}")
    dev = comm.init_distributed(device=device, timeout_s=cfg.solver.dist_timeout)
    main = comm.is_main_process()
    refused: BaseException | None = None
    if main:
        existed = os.path.isdir(cfg.output_dir)
        try:
            check_output_dir(cfg, overwrite=overwrite, resume=resume)
            acquire_run_lock(cfg.output_dir)
            prepare_output_dir(cfg.output_dir, resume=resume, overwrite=overwrite)
        except Exception as e:  # noqa: BLE001 - raised below, after every rank knows
            refused = e
            release_run_lock(cfg.output_dir)
            if not existed and os.path.isdir(cfg.output_dir) and not any(os.scandir(cfg.output_dir)):
                os.rmdir(cfg.output_dir)
    if comm.all_reduce_flag(refused is not None):  # the other ranks stop too, instead of waiting at a barrier
        if refused is not None:
            raise refused
        raise ValueError(f"output_dir {cfg.output_dir}: refused by rank 0 (its error says why)")
    comm.barrier()
    setup_logger(cfg.output_dir, main_process=main)
    if main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    logger.info("output_dir %s, %d process(es), device %s", cfg.output_dir, comm.get_world_size(), dev)
    return dev


def _solver_changes(cfg: Any, state: dict) -> dict[str, tuple[Any, Any]]:
    """``solver.<key>: (checkpoint's value, config's value)`` for every solver setting that differs."""
    old = (state.get("config") or {}).get("solver") or {}
    new = config_to_dict(cfg)["solver"]
    return {f"solver.{k}": (old[k], v) for k, v in new.items() if k in old and old[k] != v}


def _trim_metrics(output_dir: str, iteration: int) -> None:
    """Drop metrics.jsonl rows logged after ``iteration`` (by a run that went on past its last checkpoint)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if int(json.loads(line).get("iteration", 0)) <= iteration:
                kept.append(line)
        except (ValueError, AttributeError):  # a half-written last line: drop it
            continue
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
        logger.info("metrics.jsonl: removed %d row(s) logged after iteration %d", len(lines) - len(kept), iteration)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _class_change(old: list[str], new: list[str]) -> str:
    if sorted(old) == sorted(new):
        moved = [f"{c} {old.index(c) + 1}->{new.index(c) + 1}" for c in new if old.index(c) != new.index(c)]
        return (f"the same classes in another order, so labels would be swapped (label of {', '.join(moved[:4])}"
                f"{', ...' if len(moved) > 4 else ''})")
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    parts = ([f"added {added[:5]}"] if added else []) + ([f"removed {removed[:5]}"] if removed else [])
    return f"{len(old)} -> {len(new)} classes ({'; '.join(parts) or 'renamed'})"


def check_resume_fits(model: nn.Module, state: dict, cfg: Any, *, source: str,
                      class_names: list[str] | None = None) -> None:
    """Refuse (ValueError, one line) to resume ``state`` into ``model`` when the class names (their order
    included) or any parameter's shape differ, saying what changed (config keys under ``model.`` and
    ``data.classes`` that differ from the checkpoint's config, and the first differing tensor)."""
    old_names = state.get("class_names")
    if class_names is not None and old_names is not None and list(old_names) != list(class_names):
        raise ValueError(f"--resume: {source} was trained on other classes: {_class_change(list(old_names), list(class_names))}; "
                         "restore data.classes / the data, or start a new run (another output_dir, or --overwrite)")
    own = comm.unwrap_model(model).state_dict()
    theirs = state.get("model") or {}
    diff = [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
    missing, unexpected = [k for k in own if k not in theirs], [k for k in theirs if k not in own]
    if not (diff or missing or unexpected):
        return
    old_cfg, new_cfg = _flat((state.get("config") or {}).get("model") or {}, "model."), _flat(config_to_dict(cfg).get("model", {}), "model.")
    changed = [f"{k}: {old_cfg[k]!r} -> {v!r}" for k, v in new_cfg.items() if k in old_cfg and old_cfg[k] != v]
    if diff:
        k = diff[0]
        detail = f"{k} is {list(theirs[k].shape)} in the checkpoint, {list(own[k].shape)} now"
    else:
        detail = f"parameters {'missing' if missing else 'unexpected'}: {(missing or unexpected)[:2]}"
    raise ValueError(f"--resume: {source} holds another model ({'; '.join(changed[:4]) or 'changed architecture'}; "
                     f"{detail}); restore those settings, or start a new run (another output_dir, or --overwrite)")


def _resume(trainer: Trainer, cfg: Any, device: torch.device, *, new_solver: bool,
            class_names: list[str] | None = None) -> None:
    path = find_last_checkpoint(cfg.output_dir)
    if path is None:
        logger.info("--resume: no checkpoint in %s, starting from iteration 0", cfg.output_dir)
        if comm.is_main_process():
            _trim_metrics(cfg.output_dir, 0)  # rows of an earlier attempt that wrote no checkpoint
        return
    state = load_checkpoint(path, map_location=device)
    check_resume_fits(trainer.model, state, cfg, source=path, class_names=class_names)
    changes = _solver_changes(cfg, state)
    trainer.load_state_dict(state, source=path, keep_solver=not new_solver)
    trainer.last_checkpoint = path
    if comm.is_main_process():
        _trim_metrics(cfg.output_dir, trainer.start_iter)
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changes.items()))
        if new_solver:
            logger.warning("--new-solver: applying the config's solver settings from iteration %d: %s",
                           trainer.start_iter, listed)
        else:
            logger.warning("the config's solver settings differ from the checkpoint's (%s); the checkpoint's "
                           "learning rate and schedule continue. Pass --new-solver to apply the config's.", listed)
    logger.info("resumed from %s at iteration %d (lr %.6g)", path, trainer.start_iter,
                trainer.optimizer.param_groups[0]["lr"])


def run_training(cfg: Any, *, model: nn.Module, loss_fn: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
                 loader_factory: Callable[[int], Iterable], eval_fn: Callable[[nn.Module], dict] | None,
                 meta: dict, device: torch.device, resume: bool = False, new_solver: bool = False,
                 progress: bool = True, batch_size_fn: Callable[[Any], int] | None = None,
                 extra_state: dict | None = None, extra_hooks: Iterable[HookBase] = ()) -> dict[str, Any]:
    """Train ``model`` (DDP-wrapped when distributed) with ``cfg.solver`` and the default hooks.

    Writes to ``cfg.output_dir``: metrics.jsonl and TensorBoard events (every ``solver.log_period``),
    checkpoints (every ``solver.checkpoint_period``, and ``model_final.pth``), eval.json (every
    ``test.eval_period`` and at the end). ``resume`` continues from the last checkpoint there (with the
    checkpoint's learning rate and schedule, or the config's with ``new_solver``).
    ``extra_hooks`` (a task's own, e.g. a rate set from the training error) run before the default hooks.
    Returns ``{"iteration", "losses", "eval"}``.
    """
    optimizer, scheduler = build_solver(cfg, model)
    s = cfg.solver
    iter_size = resolve_batch(cfg).iter_size  # solver.batch_rule accumulate: the reference batch per update
    trainer = Trainer(model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                      loader_factory=loader_factory, max_iter=s.max_iter, device=device, amp=s.amp,
                      clip_grad_norm=s.clip_grad_norm, iter_size=iter_size, batch_size_fn=batch_size_fn)
    trainer.dist_timeout = s.dist_timeout
    if resume:
        _resume(trainer, cfg, device, new_solver=new_solver, class_names=(extra_state or {}).get("class_names"))
    with MetricsWriter(cfg.output_dir, max_iter=s.max_iter, start_iter=trainer.start_iter,
                       enabled=comm.is_main_process(), progress=progress) as writer:
        hooks = [*extra_hooks, MetricsHook(writer, period=s.log_period),
                 CheckpointHook(cfg.output_dir, period=s.checkpoint_period, meta=meta, config=config_to_dict(cfg),
                                extra=extra_state)]
        if eval_fn is not None:
            hooks.append(EvalHook(eval_fn, period=cfg.test.eval_period, output_dir=cfg.output_dir, writer=writer))
        trainer.register_hooks(hooks)
        result = trainer.train()
    if comm.is_main_process():
        try:
            path = plot_training_curves(os.path.join(cfg.output_dir, "metrics.jsonl"),
                                        os.path.join(cfg.output_dir, "training_curves.png"))
            logger.info("drew the loss and mAP curves in %s", path)
        except ValueError as e:  # nothing logged (log_period 0): no picture
            logger.info("no training curves: %s", e)
    return result
