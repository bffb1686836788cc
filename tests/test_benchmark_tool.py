"""tools/benchmark.py train-step runs a config end to end (figures are not asserted: no timed tests)."""
import argparse

from detres.benchmarks import BENCHMARKS
from tests._engine_helpers import write_tiny_config


def test_train_step_benchmark_runs_a_config(tmp_path):
    cfg = write_tiny_config(tmp_path)
    parser = argparse.ArgumentParser()
    BENCHMARKS["train-step"].add_arguments(parser)  # the tool's own options and defaults
    args = parser.parse_args([str(cfg), "--iters", "1", "--device", "cpu", "--set", "solver.ims_per_batch=1"])
    out = BENCHMARKS["train-step"].run(args)
    row = out["tiny"]
    assert row["backbone"] == "resnet18" and row["ims_per_batch"] == 1 and row["s_per_iter"] > 0
    assert set(BENCHMARKS) >= {"voc-eval", "data", "train-step", "cls-step"}
