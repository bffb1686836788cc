"""tools/benchmark.py train-step runs a config end to end and reports what it timed (a fake clock makes the
figures exact; no real timing is asserted)."""
import argparse
import types

import pytest

import detres.benchmarks.train as train_bench
from detres.benchmarks import BENCHMARKS
from tests._engine_helpers import write_tiny_config


def test_train_step_benchmark_runs_a_config(tmp_path, monkeypatch):
    # perf_counter, as time_sgd_steps reads it: the warm-up step's start, then each timed step's start and end;
    # the three timed steps take 0.5 s, 0.25 s and 2 s: median 0.5 s (mean, min and max differ from it).
    # A further read is an error.
    clock = iter([0.0, 1.0, 1.5, 2.0, 2.25, 3.0, 5.0])
    monkeypatch.setattr(train_bench, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    cfg = write_tiny_config(tmp_path)
    parser = argparse.ArgumentParser()
    BENCHMARKS["train-step"].add_arguments(parser)  # the tool's own options and defaults
    args = parser.parse_args([str(cfg), "--iters", "3", "--device", "cpu", "--set", "solver.ims_per_batch=1"])
    out = BENCHMARKS["train-step"].run(args)
    assert out == {"tiny": {"s_per_iter": 0.5, "images_per_s": 2.0, "iters": 3,
                            "image_size": [64, 64],  # min_size x min(max_size, 4/3 min_size)
                            "ims_per_batch": 1, "backbone": "resnet18", "amp": None, "channels_last": False,
                            "compile": False}}
    with pytest.raises(StopIteration):  # exactly the 7 reads above: 1 warm-up + 3 timed steps ran
        next(clock)
    assert set(BENCHMARKS) >= {"voc-eval", "data", "train-step", "cls-step"}
