"""Faults of long runs, on the real engine: tools/train_det.py under torchrun (gloo on the CPU), tiny runs.

A worker SIGKILLed after a checkpoint and restarted by ``torchrun --max-restarts 1 ... --resume`` ends with the
uninterrupted run's weights, bit for bit; SIGTERM ends a run and every process it started, exit code 143; a
disk that refuses the checkpoint leaves the previous one intact with one line naming the file and the free
space; a rank that stops answering ends the others within ``solver.dist_timeout``, naming it; two "nodes" on
one machine train as two processes on one node do. Run them alone with ``pytest -m faults tests/test_faults.py``
(``DETRES_FAULT_REPEATS=10`` repeats the kill-and-restart test with the kill at different moments).

Every wait polls for a file or a log line with a generous deadline (the CI machine is slow and shared); a
run still alive at the end of a test is killed with its whole process group.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _engine_helpers import write_tiny_config

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "train_det.py"
DEADLINE = 420  # seconds any one run may take on a loaded 2-core machine


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def _config(tmp: Path, name: str, data_root: Path, **over) -> Path:
    """A tiny shapes run: 4 iterations, a checkpoint after each, no pictures; ``over`` per section."""
    solver = {"max_iter": 4, "checkpoint_period": 1, "steps": [3], "dist_timeout": 120, **over.pop("solver", {})}
    return write_tiny_config(tmp, f"{name}.yaml", data_root=data_root, output_dir=tmp / name, solver=solver,
                             test={"eval_period": 0, "num_vis_images": 0}, **over)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *args]


class Run:
    """A tool run in its own process group, its output in ``log``; killed with its group by :meth:`close`."""

    def __init__(self, argv: list[str], log: Path, **popen) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, env=popen.pop("env", _env()),
                                     start_new_session=True, **popen)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"still running after {timeout} s:\n{self.text()[-3000:]}")

    def close(self) -> None:
        """Kill what is left: the process, and its descendants (torchrun starts each worker in a session of
        its own, so killing torchrun's group would leave them running)."""
        if self.proc.poll() is None:
            family = _children(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in family:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
        self._out.close()


def _wait_for(what: str, ready, run: Run, timeout: float = DEADLINE, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = ready()
        if got:
            return got
        if run.proc.poll() is not None:
            pytest.fail(f"the run ended (exit {run.proc.returncode}) before {what}:\n{run.text()[-3000:]}")
        time.sleep(step)
    run.close()
    pytest.fail(f"no {what} after {timeout} s:\n{run.text()[-3000:]}")


def _children(pid: int) -> dict[int, str]:
    """``{pid: command line}`` of every living descendant of ``pid`` (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    parent[int(d.name)] = int(fields[1])
            except (OSError, IndexError):
                continue
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        for p in frontier:
            try:
                found[p] = (Path("/proc") / str(p) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                found[p] = "?"
    return found


def _rank_pid(torchrun_pid: int, rank: int) -> int:
    for pid, cmd in _children(torchrun_pid).items():
        if "train_det.py" in cmd:
            try:
                env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return pid
    return 0


def _alive(pids) -> list[int]:
    out = []
    for p in pids:
        try:
            state = (Path("/proc") / str(p) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(p)
    return out


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa["iteration"] == wb["iteration"]
    assert wa["model"].keys() == wb["model"].keys()
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k


def _iterations(metrics: Path) -> list[int]:
    import json

    return [json.loads(line)["iteration"] for line in metrics.read_text().splitlines() if "total_loss" in line]


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^(\[[^\]]*\]:)?error: ", ln)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The shapes data every run here reads, generated once here (the runs only read it)."""
    from detres.config import load_config
    from detres.tasks.detection import build_train_dataset

    tmp = tmp_path_factory.mktemp("fault_data")
    cfg = load_config(_config(tmp, "gen", tmp / "data"))
    build_train_dataset(cfg)
    return tmp / "data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> Path:
    """model_final.pth of an uninterrupted 2-process run (one node)."""
    tmp = tmp_path_factory.mktemp("fault_ref")
    cfg = _config(tmp, "ref", data)
    run = Run(_torchrun("--standalone", str(TOOL), str(cfg), "--no-progress"), tmp / "ref.log")
    try:
        assert run.wait() == 0, run.text()[-3000:]
    finally:
        run.close()
    return tmp / "ref" / "model_final.pth"


def _kill_and_restart(tmp: Path, data: Path, reference: Path, moment: str) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = _config(tmp, "killed", data)
    out = tmp / "killed"
    run = Run(_torchrun("--standalone", "--max-restarts", "1", str(TOOL), str(cfg), "--resume", "--no-progress"),
              tmp / "killed.log")
    try:
        _wait_for("the first checkpoint", lambda: (out / "model_0000001.pth.sha256").is_file(), run)
        if moment == "checkpoint":  # rank 0 writing a later one (its temporary file exists)
            _wait_for("a checkpoint being written", lambda: list(out.glob("model_*.pth.tmp.*")), run, step=0.002)
        elif moment == "step":
            time.sleep(0.3)
        victim = _rank_pid(run.proc.pid, 1 if moment != "checkpoint" else 0)
        assert victim, _children(run.proc.pid)
        os.kill(victim, signal.SIGKILL)
        code = run.wait()
    finally:
        run.close()
    text = run.text()
    assert code == 0, text[-4000:]
    assert "resumed from" in text, text[-4000:]
    _same_weights(reference, out / "model_final.pth")
    assert _iterations(out / "metrics.jsonl") == [1, 2, 3, 4]


def test_sigkill_of_a_worker_then_torchrun_restart_gives_the_uninterrupted_weights(tmp_path, data, reference):
    """torchrun --max-restarts 1 ... --resume: one worker SIGKILLed after the first checkpoint; the restarted
    group resumes from the last checkpoint and ends bit-identical to the uninterrupted run, each iteration
    logged once. DETRES_FAULT_REPEATS=N repeats it N times, the kill inside a step, right after a checkpoint
    and during a checkpoint write in turn."""
    moments = ["after_checkpoint", "step", "checkpoint"]
    repeats = int(os.environ.get("DETRES_FAULT_REPEATS", "1"))
    for i in range(repeats):
        _kill_and_restart(tmp_path / f"try{i}", data, reference, moments[i % len(moments)])


def _sigterm(tmp: Path, argv: list[str], out: Path) -> None:
    run = Run(argv, tmp / "term.log")
    try:
        _wait_for("the first checkpoint", lambda: (out / "model_0000001.pth.sha256").is_file(), run)
        _wait_for("a loader worker", lambda: any("forkserver" in c or "multiprocessing" in c
                                                 for c in _children(run.proc.pid).values()), run)
        family = set(_children(run.proc.pid)) | {run.proc.pid}
        os.kill(run.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        code = run.wait()
        while _alive(family) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        left = {p: c for p, c in _children(1).items() if p in family and _alive([p])}
    finally:
        run.close()
    text = run.text()
    assert code == 143, text[-3000:]
    assert not left, f"still alive 10 s after SIGTERM: {left}"
    errors = _error_lines(text)
    assert errors and all("terminated (SIGTERM)" in e for e in errors), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint

    load_checkpoint(find_last_checkpoint(str(out)))  # intact: its sha256 matches


def test_sigterm_ends_a_run_and_all_its_processes(tmp_path, data):
    cfg = _config(tmp_path, "single", data, solver={"max_iter": 50}, data={"num_workers": 1})
    _sigterm(tmp_path, [sys.executable, str(TOOL), str(cfg), "--no-progress"], tmp_path / "single")


def test_sigterm_to_torchrun_ends_every_rank_and_their_processes(tmp_path, data):
    """``python -m detres.utils.launch`` is torchrun with one line and exit code 143 on SIGTERM (torchrun itself
    re-raises the signal with a traceback and exit code 1); its workers end as a single process does."""
    cfg = _config(tmp_path, "multi", data, solver={"max_iter": 50}, data={"num_workers": 1})
    launch = [sys.executable, "-m", "detres.utils.launch", *_torchrun("--standalone", str(TOOL), str(cfg),
                                                                        "--no-progress")[3:]]
    _sigterm(tmp_path, launch, tmp_path / "multi")


_FSIZE_CHILD = """
import resource, signal, sys
import detres.engine.checkpoint as ck
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit a write fails with EFBIG instead of killing
save = ck.save_checkpoint
def limited(state, path, **kw):
    out = save(state, path, **kw)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the disk is "full" from now on
    return out
ck.save_checkpoint = limited
import detres.engine.hooks as hooks
hooks.save_checkpoint = limited
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv[0].rsplit("/tools/", 1)[0])
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, data):
    """After the first checkpoint every file is limited to 1 MiB (RLIMIT_FSIZE): the second checkpoint's write
    fails; one line names it and the free space; the first stays intact and is what --resume reads."""
    from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint

    cfg = _config(tmp_path, "full", data)
    run = Run([sys.executable, "-c", _FSIZE_CHILD, str(TOOL), str(cfg), "--no-progress"], tmp_path / "full.log")
    try:
        code = run.wait()
    finally:
        run.close()
    text = run.text()
    errors = _error_lines(text)
    assert code == 2 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert "model_0000002.pth" in errors[0] and "MiB free" in errors[0] and "file-size limit" in errors[0], errors
    out = tmp_path / "full"
    assert find_last_checkpoint(str(out)) == str(out / "model_0000001.pth")
    assert load_checkpoint(str(out / "model_0000001.pth"))["iteration"] == 1
    assert not list(out.glob("*.tmp.*")) and not (out / "model_0000002.pth").exists()


_READ_ONLY_CHILD = _FSIZE_CHILD.replace(
    "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the disk is \"full\" from now on",
    "import os, subprocess; folder = os.path.dirname(os.path.abspath(path)); os.chmod(folder, 0o555)\n"
    "    if os.geteuid() == 0: subprocess.run(['chattr', '+i', folder], check=True)  # root ignores modes")


def _can_freeze(folder: Path) -> bool:
    """Whether a folder can be made unwritable here: by its mode, or as root with ``chattr +i`` (ext4, xfs)."""
    if os.geteuid() != 0:
        return True
    probe = folder / "probe"
    probe.mkdir()
    try:
        return subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    except OSError:
        return False
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.rmdir()


def test_a_checkpoint_folder_turned_read_only_keeps_the_previous_one(tmp_path, data):
    """After the first checkpoint the output folder becomes read-only (the run itself makes it so: its mode, and
    as root, whom modes do not stop, ``chattr +i``): one line names the checkpoint, the first stays intact."""
    from detres.engine.checkpoint import find_last_checkpoint, load_checkpoint

    if not _can_freeze(tmp_path):
        pytest.skip("running as root on a file system without chattr +i: a folder cannot be made read-only")
    cfg = _config(tmp_path, "ro", data)
    out = tmp_path / "ro"
    run = Run([sys.executable, "-c", _READ_ONLY_CHILD, str(TOOL), str(cfg), "--no-progress"], tmp_path / "ro.log")
    try:
        code = run.wait()
    finally:
        run.close()
        if out.exists() and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(out)], capture_output=True)
        out.chmod(0o755) if out.exists() else None
    text = run.text()
    errors = _error_lines(text)
    assert code == 2 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert "model_0000002.pth" in errors[0] and re.search("Permission denied|Operation not permitted", errors[0]), errors
    assert find_last_checkpoint(str(out)) == str(out / "model_0000001.pth")
    assert load_checkpoint(str(out / "model_0000001.pth"))["iteration"] == 1


def test_a_rank_that_stops_answering_is_named_within_the_timeout(tmp_path, data):
    """Rank 1 is stopped (SIGSTOP) after the first checkpoint: rank 0 stops within solver.dist_timeout with one
    line naming rank 1, instead of waiting forever."""
    timeout = 10
    cfg = _config(tmp_path, "stuck", data, solver={"max_iter": 50, "dist_timeout": timeout})
    out = tmp_path / "stuck"
    run = Run(_torchrun("--standalone", str(TOOL), str(cfg), "--no-progress"), tmp_path / "stuck.log")
    victim = 0
    try:
        _wait_for("the first checkpoint", lambda: (out / "model_0000001.pth.sha256").is_file(), run)
        victim = _rank_pid(run.proc.pid, 1)
        os.kill(victim, signal.SIGSTOP)
        t0 = time.monotonic()
        _wait_for("rank 0's message", lambda: "stopped answering" in run.text(), run, timeout=timeout + 120)
        took = time.monotonic() - t0
        os.kill(victim, signal.SIGKILL)  # else torchrun waits 30 s for the stopped process to take its SIGTERM
        run.wait()
    finally:
        if victim:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        run.close()
    line = next(ln for ln in run.text().splitlines() if "stopped answering" in ln)
    assert "rank(s) 1 stopped answering" in line and f"solver.dist_timeout {timeout} s" in line, line
    assert took < timeout + 60, took  # the timeout, the others' reports (timeout / 4), the step that was running


def test_two_nodes_on_one_machine_train_as_two_processes_on_one_node(tmp_path, data, reference):
    """torchrun --nnodes 2 --node-rank 0/1 with a c10d rendezvous on 127.0.0.1, both writing into one output
    folder: the run ends with the one-node run's weights, and only global rank 0 wrote (each iteration once)."""
    cfg = _config(tmp_path, "ref", data)  # the name of the reference's folder: the saved configs then agree
    port = _free_port()
    runs = [Run(_torchrun("--nnodes", "2", "--node-rank", str(n), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                          f"127.0.0.1:{port}", "--rdzv-id", "faults", str(TOOL), str(cfg), "--no-progress", nproc=1),
                tmp_path / f"node{n}.log") for n in (0, 1)]
    try:
        codes = [r.wait() for r in runs]
    finally:
        for r in runs:
            r.close()
    assert codes == [0, 0], [r.text()[-2000:] for r in runs]
    out = tmp_path / "ref"
    _same_weights(reference, out / "model_final.pth")
    assert _iterations(out / "metrics.jsonl") == [1, 2, 3, 4]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1


def test_a_group_that_cannot_be_joined_fails_within_the_timeout_naming_it(monkeypatch):
    """A rank whose peers or store never answer (a restart pointed at a dead attempt's store) stops after the
    timeout with one line naming the rank and the address, instead of waiting 30 minutes."""
    from detres.utils.cli import RunFault
    from detres.utils.comm import init_distributed, is_distributed

    port = _free_port()  # nothing listens there
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    t0 = time.monotonic()
    with pytest.raises(RunFault, match=rf"rank 1: could not join the process group of 2 ranks at 127.0.0.1:{port} "
                                       r"\(solver.dist_timeout 2 s\)"):
        init_distributed(device="cpu", timeout_s=2)
    assert time.monotonic() - t0 < 60 and not is_distributed()
