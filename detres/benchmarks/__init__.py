"""Benchmarks run by ``tools/benchmark.py <name>``.

A benchmark is registered with :func:`register`: a name, a help line, a function adding its
arguments to an argparse sub-parser, and a function ``run(args) -> dict`` returning the measured
figures (printed as JSON by the tool). To add one (e.g. ``train-step``), write a module with a
``@register(...)`` function and import it at the bottom of this file.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Benchmark", "BENCHMARKS", "register"]


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


BENCHMARKS: dict[str, Benchmark] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: ``@register("voc-eval", "...", add_args) def run(args) -> dict``."""
    def wrap(fn: Callable[[argparse.Namespace], dict[str, Any]]):
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = Benchmark(name, help, add_arguments, fn)
        return fn
    return wrap


from detres.benchmarks import data_eval  # noqa: E402,F401  (registers voc-eval, data)
from detres.benchmarks import train  # noqa: E402,F401  (registers train-step, cls-step)
from detres.benchmarks import infer  # noqa: E402,F401  (registers infer)
from detres.benchmarks import scale  # noqa: E402,F401  (registers scale, paper-configs)
