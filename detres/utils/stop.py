"""How a run is stopped from outside: SIGTERM ends it like Ctrl-C, and neither cuts a file being written.

Job schedulers (Slurm, Kubernetes, torchrun passing on its own signal) stop a job with SIGTERM. Python's
default action for it kills the process at once: no ``finally`` runs, so the DataLoader's workers, its
forkserver and the resource tracker outlive the run, and a half-written file may be left. :func:`install`
(called by ``utils.cli.run_tool``) makes SIGTERM raise :class:`Terminated`, a ``KeyboardInterrupt``, so the
stack unwinds as on Ctrl-C (loaders shut their workers down, locks are released) and the tool ends with one
line and exit code 143 (128 + SIGTERM, what the shell reports for a process killed by it).

:func:`deferred` holds SIGINT and SIGTERM back while a file is written (``utils.io.atomic_write``): the write
finishes (or fails on its own) and the interruption is raised right after it. A second signal during the
write interrupts it at once; the old file is then left as it was. Signals are only handled in the main
thread (Python's rule); elsewhere both functions do nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "install", "terminated", "deferred", "EXIT_TERMINATED"]

#: Exit code of a tool stopped by SIGTERM (128 + 15).
EXIT_TERMINATED = 128 + signal.SIGTERM

_state = {"terminated": False}


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM: unwinds the stack like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - the signal module's signature
    _state["terminated"] = True
    raise Terminated("terminated by SIGTERM")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Make SIGTERM raise :class:`Terminated` in this process (main thread; a handler someone else installed
    is kept)."""
    if _main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None, _on_sigterm):
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether this process has received SIGTERM through :func:`install`'s handler (an error raised while the
    stack unwinds, e.g. a collective whose peer is gone, is then part of the stop, not a failure)."""
    return _state["terminated"]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held back: one arriving meanwhile is raised (KeyboardInterrupt or
    :class:`Terminated`) when the block ends, also when the block failed because of it (torch.save turns an
    interruption inside its writer into ``RuntimeError: ... unexpected pos``). A second one is raised at once.
    Nested blocks are one block: the outermost raises (a checkpoint and its checksum file are one write)."""
    if not _main_thread() or _state.get("deferring"):  # another deferred() around this one raises it
        yield
        return
    got: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum, frame) -> None:  # noqa: ARG001
        got.append(signum)
        if len(got) > 1:
            _raise(signum)
    for s in previous:
        signal.signal(s, hold)
    _state["deferring"] = True
    try:
        yield
    except BaseException:
        if got:  # the block failed while a stop was pending: the stop is what the user asked for
            _state["deferring"] = False
            _restore(previous)
            _raise(got[0])
        raise
    finally:
        _state["deferring"] = False
        _restore(previous)
    if got:
        _raise(got[0])


def _restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _raise(signum: int) -> None:
    if signum == signal.SIGTERM:
        _state["terminated"] = True
        raise Terminated("terminated by SIGTERM") from None
    raise KeyboardInterrupt from None
