"""The paper's evidence on the degradation problem (He et al. 2015, Sec. 4.2): Fig. 6, Fig. 7, Table 6.

- :func:`layer_responses` (Fig. 7): the standard deviation of every 3x3 layer's response, taken after its
  BN and before the addition and the ReLU, over a whole data set; :func:`plot_layer_responses` draws them by
  layer index and sorted by magnitude, plain nets against residual nets.
- :func:`plot_error_curves` (Fig. 6): training error (thin) and test error (bold) against the iteration,
  plain nets in one panel and residual nets in the other, from the runs' ``metrics.jsonl`` rows.
- :data:`PAPER_TABLE6` and :func:`format_table6` (Table 6): each run's test error beside the paper's.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from detres.evaluation.plots import _pyplot, _save
from detres.utils.io import atomic_write_json

__all__ = ["layer_responses", "plot_layer_responses", "FIG7_TITLE", "plot_error_curves", "PAPER_TABLE6", "format_table6"]

#: He et al. 2015, Table 6: CIFAR-10 test error (%) of the residual nets (the plain nets have no row).
PAPER_TABLE6: dict[str, float] = {"cifar_resnet20": 8.75, "cifar_resnet32": 7.51, "cifar_resnet44": 7.17,
                                  "cifar_resnet56": 6.97, "cifar_resnet110": 6.43, "cifar_resnet1202": 7.93}


def _three_by_three_bns(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, BN) for every BN that directly follows a 3x3 conv (``convK`` + ``bnK`` on one module), in order."""
    found = []
    for name, module in model.named_modules():
        for k in (1, 2, 3):
            conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and bn is not None:
                found.append((f"{name}.bn{k}" if name else f"bn{k}", bn))
    return found


@torch.no_grad()
def layer_responses(model: nn.Module, data_loader: Iterable, *, device: str | torch.device = "cpu"
                    ) -> list[tuple[str, float]]:
    """``[(layer name, std), ...]`` in network order: for each 3x3 conv, the standard deviation of its BN's
    output over every element (images, channels, positions) the loader gives, in eval mode (the response
    before the addition and the ReLU, as the paper's Fig. 7). Batches are ``(images, labels)``."""
    device = torch.device(device)
    layers = _three_by_three_bns(model)
    if not layers:
        raise ValueError("the model has no 3x3 conv followed by a BN (convK + bnK)")
    sums = {n: [0.0, 0.0, 0] for n, _ in layers}  # sum, sum of squares, count (float64 on the host)

    def hook(name):
        def record(module, inputs, output):
            x = output.detach().double()
            acc = sums[name]
            acc[0] += float(x.sum())
            acc[1] += float((x * x).sum())
            acc[2] += x.numel()
        return record

    handles = [bn.register_forward_hook(hook(n)) for n, bn in layers]
    was_training = model.training
    model.eval()
    try:
        for images, _ in data_loader:
            model(images.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = []
    for name, _ in layers:
        s, sq, n = sums[name]
        if n == 0:
            raise ValueError("the data loader gave no images")
        out.append((name, float(np.sqrt(max(sq / n - (s / n) ** 2, 0.0)))))
    return out


#: Fig. 7's title (the figure explains itself when found alone in docs/).
FIG7_TITLE = "Fig. 7: std of each 3x3 layer's response (after BN, before the addition and ReLU)"


def _layer_response_figure(results: Mapping[str, Sequence[tuple[str, float]]]):
    """The figure of :func:`plot_layer_responses`. Every line stays visible where runs coincide (plain-20 and
    ResNet-20 are both near 1): residual runs are drawn first, solid, plain runs over them, dashed and with
    markers, each line thinner than the ones under it; each run has its own colour; the legend sits outside
    the axes."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = sorted(results, key=lambda label: "plain" in label)  # residual first, plain on top
    for k, label in enumerate(order):
        stds = [s for _, s in results[label]]
        plain = "plain" in label
        style = dict(color=colours[list(results).index(label) % len(colours)], label=label, zorder=2 + k,
                     lw=1.2 + 1.4 * (len(order) - 1 - k), ls="--" if plain else "-",
                     marker="o" if plain else None, ms=3)
        top.plot(range(1, len(stds) + 1), stds, **style)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        by_label = dict(zip(labels, handles))
        ax.legend([by_label[k] for k in results], list(results), fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(FIG7_TITLE, fontsize=11)
    fig.tight_layout()
    return fig, (top, bottom)


def plot_layer_responses(results: Mapping[str, Sequence[tuple[str, float]]], path: str | os.PathLike) -> str:
    """Fig. 7: ``results`` = run label -> :func:`layer_responses`. Top: std by layer index; bottom: sorted
    by magnitude; titled. Plain runs (label containing "plain") dashed with markers over the residual runs'
    solid lines, each thinner than those under it, so that coinciding curves stay visible. Writes the PNG and
    ``<path>.json``."""
    if not results:
        raise ValueError("plot_layer_responses: no runs")
    fig, _ = _layer_response_figure(results)
    atomic_write_json(f"{os.fspath(path)}.json", {k: [list(r) for r in v] for k, v in results.items()})
    return _save(fig, path)


def plot_error_curves(runs: Mapping[str, Sequence[dict]], path: str | os.PathLike, *,
                      train_key: str = "train_error", test_key: str = "eval/top1_error_center") -> str:
    """Fig. 6: ``runs`` = label -> metrics.jsonl rows. Training error thin, test error bold, in percent
    against the iteration; labels containing "plain" in the left panel, the others in the right one."""
    if not runs:
        raise ValueError("plot_error_curves: no runs")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs.items()):
        ax = axes[0] if "plain" in label else axes[1]
        c = colours[i % len(colours)]
        train = [(r["iteration"], 100 * r[train_key]) for r in rows if train_key in r]
        test = [(r["iteration"], 100 * r[test_key]) for r in rows if isinstance(r.get(test_key), (int, float))]
        if train:
            ax.plot(*zip(*train), color=c, lw=0.8, alpha=0.8, label=f"{label} train")
        if test:
            ax.plot(*zip(*test), color=c, lw=2.5, label=f"{label} test")
    for ax, title in zip(axes, ("plain", "residual")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.tight_layout()
    return _save(fig, path)


def format_table6(rows: Sequence[tuple[str, str, float | None]]) -> str:
    """Table 6 beside the runs: ``rows`` = (run folder, network name, test error in [0, 1] or None)."""
    width = max([len(r[0]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'network':<18} {'error %':>8} {'paper %':>8} {'delta':>7}", "-" * (width + 46)]
    for run, net, err in rows:
        paper = PAPER_TABLE6.get(net)
        ours = "n/a" if err is None else f"{100 * err:.2f}"
        delta = "" if err is None or paper is None else f"{100 * err - paper:+.2f}"
        lines.append(f"{run:<{width}}  {net:<18} {ours:>8} {'-' if paper is None else f'{paper:.2f}':>8} {delta:>7}")
    return "\n".join(lines)
