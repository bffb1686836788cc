"""Run logging on rank 0: ``metrics.jsonl`` (one JSON object per logged iteration), TensorBoard events,
a text logger (``log.txt`` + stderr) with a plain line per logged iteration (:meth:`MetricsWriter.log_line`),
and a tqdm progress bar (loss, lr, images/s, ETA) only when stderr is a terminal: redirected to a file, a bar
would be one endless line. While the bar is shown, the plain lines go to ``log.txt`` only.
Other ranks get a logger that does nothing but warnings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

__all__ = ["setup_logger", "MetricsWriter", "format_seconds"]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted: notebooks and test runners replace it,
    and a handler holding an old (closed) stream would fail on every later record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: logging.StreamHandler sets it; the stream is always the current sys.stderr."""


def setup_logger(output_dir: str | None = None, *, name: str = "detres", main_process: bool = True) -> logging.Logger:
    """A logger writing INFO to stderr and ``output_dir/log.txt`` on the main process (WARNING elsewhere)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    sh = _StderrHandler()
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    if output_dir and main_process:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class MetricsWriter:
    """Rank-0 sink for scalars: appends to ``metrics.jsonl``, writes TensorBoard, drives the progress bar.

    ``enabled=False`` (other ranks) makes every method a no-op. A context manager: leaving it closes the
    files and the bar.
    """

    def __init__(self, output_dir: str, *, max_iter: int, start_iter: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.output_dir = output_dir
        self._bar = None
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._jsonl = open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=output_dir, purge_step=start_iter if start_iter > 0 else None)
            except Exception as e:  # tensorboard missing or broken: keep the jsonl log
                logging.getLogger("detres").warning("TensorBoard disabled: %s", e)
        if progress and _is_terminal(sys.stderr):
            from tqdm import tqdm
            self._bar = tqdm(total=max_iter, initial=start_iter, dynamic_ncols=True, desc="train",
                             file=sys.stderr, mininterval=1.0)

    def write(self, iteration: int, scalars: dict[str, Any]) -> None:
        """Record ``scalars`` (numbers) at ``iteration`` in metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        row = {"iteration": int(iteration)}
        for k, v in scalars.items():
            row[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "iteration" and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, iteration)
            self._tb.flush()

    @property
    def shows_bar(self) -> bool:
        return self._bar is not None

    def log_line(self, text: str) -> None:
        """One plain log line: into ``log.txt`` always, onto stderr only when no progress bar is shown."""
        if not self.enabled:
            return
        logger = logging.getLogger("detres")
        if self._bar is None:
            logger.info(text)
            return
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, text, None, None)
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def progress(self, n: int = 1, **postfix: Any) -> None:
        """Advance the bar by ``n`` iterations and show ``postfix`` (loss, lr, images/s, ETA)."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(n)

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
