"""How every tool ends: a user's mistake is one line ``error: <file or key>: <what is wrong>`` and exit 2;
a diverged run (``FloatingPointError``) or memory that ran out is one line with what to try and exit 1.

detres raises ``ValueError`` (and its subclasses) for anything wrong with what the user gave: a file, a
config key, an option. Operating-system refusals of a path (missing, not a folder, no permission, disk full,
read-only file system) are the user's too. Everything else is an internal error and keeps its traceback.
``--debug`` (or ``DETRES_DEBUG=1``) shows the traceback of user errors as well.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from typing import Callable

from detres.utils import stop

__all__ = ["USER_ERRORS", "is_user_error", "one_line", "run_tool", "check_device",
           "add_training_args", "check_training_args", "parse_args", "positive_int", "RunFault"]

#: Exception types that describe a mistake in the user's input rather than a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError)
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EDQUOT, errno.EFBIG}


def is_user_error(exc: BaseException) -> bool:
    """True for the errors a user can fix (see the module docstring)."""
    if isinstance(exc, USER_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in _USER_ERRNOS


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a disk-full error names its file)."""
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, USER_ERRORS[:1]):
        where = f"{exc.filename}: " if exc.filename else ""
        msg = f"{where}{exc.strerror or exc}"
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


def positive_int(text: str) -> int:
    """argparse ``type`` of a count that must be at least 1 (``--repeats 0`` would time nothing and end in
    ``min() arg is an empty sequence`` far from the option that caused it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


def check_device(device: str | None) -> str | None:
    """``device`` if it is ``cpu``, ``cuda`` or ``cuda:N`` (N an existing GPU) or None; else ValueError. A name
    torch would read otherwise (``gpu``, ``mps``, ``cuda0``) is refused rather than trained on the CPU."""
    if device is None:
        return None
    if not _DEVICE_RE.match(device):
        raise ValueError(f"--device {device!r}: must be cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The options every training tool shares: the config, its overrides, and what to do with output_dir."""
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. solver.max_iter=1000")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--new-solver", action="store_true",
                        help="with --resume: apply the config's solver settings (learning rate, schedule) from the "
                             "checkpoint's iteration instead of the checkpoint's own")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in output_dir")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is still written)")
    parser.add_argument("--check-data", action="store_true",
                        help="first decode and check every image and annotation (as tools/check_data.py); stop on problems")


def check_training_args(args: argparse.Namespace) -> None:
    """ValueError for option combinations that make no sense."""
    if args.new_solver and not args.resume:
        raise ValueError("--new-solver: only with --resume")
    check_device(getattr(args, "device", None))


_DIVERGED_HINT = (" Try a lower solver.base_lr, more solver.warmup_iters or solver.clip_grad_norm (e.g. 10), or "
                  "solver.amp=null, and check the data with tools/check_data.py.")


def _diverged(exc: BaseException) -> str:
    """The one line of a FloatingPointError: its message, what to try (unless it says so itself), how to
    continue and how to see the traceback."""
    msg = one_line(exc)
    if "try " not in msg.lower():
        msg += _DIVERGED_HINT
    return msg + " Continue from a good checkpoint with --resume (--new-solver to apply changed solver settings); " \
                 "--debug shows the traceback"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None, *,
               intermixed: bool = False) -> argparse.Namespace:
    """``parser``'s arguments from ``argv``. ``intermixed``: flags and positionals in any order, for the tools
    whose ``key=value`` overrides are a ``nargs="*"`` positional (``CONFIG --resume solver.max_iter=1000``):
    plain ``parse_args`` gives the positionals one run, so overrides after a flag were "unrecognized arguments".
    """
    return parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)


class UsageError(ValueError):
    """A command line argparse refused (unknown option, a count below 1, ...): one line like every user error."""


def _one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (and its sub-commands' parsers) raise :class:`UsageError` instead of printing its usage
    and exiting, so a refused option is the same one line ``error: ...`` and exit code 2 as any user error."""
    def error(message: str) -> None:
        raise UsageError(f"{parser.prog}: {message} (--help lists the options)")
    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-command parsers only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                _one_line_usage_errors(sub)


class RunFault(RuntimeError):
    """A run stopped by a fault outside detres's control (a rank that stopped answering or died): one line
    saying what happened and how to continue, exit code 1."""


def run_tool(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int | None],
             argv: list[str] | None = None, *, intermixed: bool = False) -> int:
    """Parse ``argv`` with ``parser`` (adding ``--debug``; ``intermixed``: see :func:`parse_args`), call
    ``run(args)`` and turn a user error into one line on stderr and exit code 2, a diverged run, memory that
    ran out or a :class:`RunFault` into one line and exit code 1, Ctrl-C into 130 and SIGTERM (which ends the
    run as Ctrl-C does, :mod:`detres.utils.stop`) into 143. Returns the exit code."""
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of errors too (also: DETRES_DEBUG=1)")
    _one_line_usage_errors(parser)
    try:
        args = parse_args(parser, argv, intermixed=intermixed)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    debug = args.debug or os.environ.get("DETRES_DEBUG", "") not in ("", "0")
    stop.install()
    try:
        code = run(args)
    except KeyboardInterrupt:
        return _stopped()
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs right here
        if stop.terminated() and not debug:  # e.g. a collective whose peer the same SIGTERM ended
            return _stopped()
        return _failure(exc, debug)
    return 0 if code is None else int(code)


def _stopped() -> int:
    """One line for a run stopped by Ctrl-C (130) or SIGTERM (143); what was written stays (atomic writes)."""
    logging.shutdown()
    if stop.terminated():
        print("error: terminated (SIGTERM); files written so far are intact: continue a training run with --resume",
              file=sys.stderr)
        return stop.EXIT_TERMINATED
    print("error: interrupted", file=sys.stderr)
    return 130


def _failure(exc: Exception, debug: bool) -> int:
    """The exit code of ``exc`` after its one line (re-raised when it is a bug, or with ``debug``)."""
    if debug:
        raise exc
    if isinstance(exc, (FloatingPointError, RunFault)):  # diverged, or a fault of the machines: not a bug of detres
        logging.shutdown()
        print(f"error: {_diverged(exc) if isinstance(exc, FloatingPointError) else one_line(exc)}", file=sys.stderr)
        return 1
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        logging.shutdown()
        what = one_line(exc) if str(exc) else "a memory allocation failed"
        print(f"error: out of memory: {what}; try a smaller solver.ims_per_batch, data.min_size/max_size or "
              "model, or fewer data.num_workers (--debug shows where)", file=sys.stderr)
        return 1
    if not is_user_error(exc):
        raise exc
    logging.shutdown()
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return 2
