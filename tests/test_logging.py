"""Run logs: a plain line per logged iteration in log.txt (and on stderr when no bar is shown); the tqdm bar
only on a terminal."""
from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import torch

from detres.engine.hooks import MetricsHook, format_log_line
from detres.engine.logging import MetricsWriter, setup_logger


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _trainer(max_iter):
    return SimpleNamespace(iter=0, start_iter=0, max_iter=max_iter, lr=0.01, step_time=0.5, step_images=2,
                           grad_norm=None, losses={"loss_a": torch.tensor(0.5), "loss_b": torch.tensor(0.25)})


def _run(tmp_path, *, progress):
    setup_logger(str(tmp_path))
    with MetricsWriter(str(tmp_path), max_iter=6, progress=progress, tensorboard=False) as writer:
        hook = MetricsHook(writer, period=3)
        hook.trainer = t = _trainer(6)
        for i in range(1, 7):
            t.iter = i
            hook.after_step()
        bar = writer.shows_bar
    return bar, (tmp_path / "log.txt").read_text().splitlines()


def test_the_log_line_says_iteration_losses_lr_speed_and_eta():
    line = format_log_line(20, 100, {"loss_b": 0.25, "loss_a": 0.5}, lr=0.01, images_per_s=4.0, eta_s=95)
    assert line == "iter 20/100  total_loss 0.7500  loss_a 0.5000  loss_b 0.2500  lr 0.01  images/s 4.0  eta 01:35"


def test_redirected_output_gets_plain_lines_and_no_bar(tmp_path, monkeypatch):
    err = io.StringIO()  # not a terminal (a file, a pipe, a CI log)
    monkeypatch.setattr(sys, "stderr", err)
    bar, log = _run(tmp_path, progress=True)
    assert not bar and "\r" not in err.getvalue()
    lines = [ln for ln in log if "iter " in ln]
    assert [ln.split("] ")[1].split("  ")[0] for ln in lines] == ["iter 1/6", "iter 3/6", "iter 6/6"]
    assert "total_loss 0.7500  loss_a 0.5000  loss_b 0.2500  lr 0.01  images/s 4.0" in lines[-1]
    assert [ln for ln in err.getvalue().splitlines() if "iter " in ln] == lines  # the same lines on stderr


def test_a_terminal_gets_the_bar_and_log_txt_the_lines(tmp_path, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar, log = _run(tmp_path, progress=True)
    assert bar and "train" in term.getvalue()
    assert len([ln for ln in log if "iter " in ln]) == 3
    assert "iter 3/6" not in term.getvalue()  # the lines do not break the bar
    bar, _ = _run(tmp_path / "quiet", progress=False)  # --no-progress: lines on the terminal instead
    assert not bar and "iter 3/6" in term.getvalue()
