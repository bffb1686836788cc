"""``python -m detres.utils.launch [torchrun options] tools/train_det.py ...``: torchrun, ending as the tools do.

The same launcher as ``torchrun`` (``torch.distributed.run``, every option), except when the job is stopped by
a signal: torchrun passes SIGTERM/SIGINT on to its workers (each ends with one line, see
:mod:`detres.utils.stop`) and then re-raises the signal as a ``SignalException`` with its traceback and exit
code 1 (torch/distributed/launcher/api.py, ``launch_agent``'s ``except SignalException: ... raise``). Here
that is one line and exit code 128 + the signal (143 for SIGTERM), what a job scheduler expects of a job it
stopped; and every restarted attempt gets a fresh rendezvous store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
unless set), so that no rank reads a dead attempt's keys. Every other outcome (success, a failed worker's
report) is torchrun's own.
"""
from __future__ import annotations

import os
import signal
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (default: the command line); the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    # A fresh store for every restarted attempt (not the agent's one shared by all of them, whose keys of a dead
    # attempt a restarted rank can read: see detres.utils.comm._restart_store); set to 0 to keep torch's sharing.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    try:
        torchrun(argv)
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        what = "terminated" if e.sigval == signal.SIGTERM else "interrupted"
        print(f"error: {what} ({name}): the workers were stopped; files written so far are intact: continue with "
              "--resume", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
