"""Compare runs with the paper's Tables 7 and 8 (He et al., 2015, Faster R-CNN rows).

Each run directory holds ``eval.json`` (the ``tools/eval.py --json-out`` schema) and, beside it,
``config.yaml``; from the config ``model.backbone.name`` and the data/dataset fields are read
(missing fields are tolerated and shown as "?").

Which number is compared with which figure:

- VOC 2007 test: ``mAP_11point`` (the VOC2007 metric the paper's numbers use) vs Table 7, 07+12;
- VOC 2012 test/val: ``mAP_area`` (the VOC2010+ metric of the test server) vs Table 7, 07++12;
- COCO val: ``AP50`` and ``AP`` vs Table 8 (mAP@.5, mAP@[.5, .95]).

The delta is ours minus the paper's figure for the same backbone (VGG-16 or ResNet-101); other
backbones are compared with the ResNet-101 figure (marked ``vs R101``).

Runs on data of your own (the synthetic shapes set, ``data.classes`` chosen, COCO JSON files of your own, or
VOC-format splits without a year) go into a table of their own, "own data", with their numbers and no paper
rows or deltas: the paper's figures say nothing about them.

A comparison is only the paper's when the runs differ in the network alone: :func:`config_differences`
lists every other setting that differs (the weights' file and style, and the RoI size that follows the
backbone, may differ), and the text and Markdown tables print it under "these runs differ in more than
the network:". Under "differences from py-faster-rcnn" they name, under each run, each difference from the
reference code (:data:`PFR_DIFFERENCES`: end-to-end vs alternating training, the VOC background range, the
07+12 schedule's images, the COCO ones only under COCO runs, ...) that applies to it, with the file and line
of each source; one a config key removes is named only under a run that sets the key otherwise.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from detres.config import DataConfig, RoIConfig, SolverConfig

__all__ = ["PAPER", "NETWORK_KEYS", "PFR_COMMIT", "PfrDifference", "PFR_DIFFERENCES", "RunSummary", "load_run",
           "compare_rows", "config_differences", "format_differences", "pfr_differences", "format_pfr_differences",
           "format_compare_text", "format_compare_markdown"]

#: Config keys that are part of "the network" in a paper comparison, plus where the run was written.
NETWORK_KEYS = frozenset({"model.backbone.name", "model.backbone.weights", "model.backbone.style",
                          "model.backbone.caffe_stem_pool", "model.pooler.resolution", "output_dir"})

#: The py-faster-rcnn commit (rbgirshick/py-faster-rcnn) whose files and lines the differences below cite.
PFR_COMMIT = "781a917"


@dataclass(frozen=True)
class PfrDifference:
    """A difference from py-faster-rcnn (pfr) kept on purpose: ``what`` differs, ``here`` (detres's choice and
    its source) vs ``pfr`` (the reference's, with file:line at :data:`PFR_COMMIT`, or the paper it follows), for
    the ``benchmarks`` listed and, with ``train_data``, only runs on that training data ("07+12", "07++12").
    With ``key``, it applies to a run only when that config key differs from ``pfr_value`` (the configs can
    remove the difference; the paper configs do where ``pfr_value`` is their value); a config.yaml written before
    the key existed ran with ``default``, the config's default of the key."""

    what: str
    here: str
    pfr: str
    benchmarks: tuple[str, ...]
    key: str | None = None
    pfr_value: Any = None
    train_data: tuple[str, ...] | None = None
    default: Any = None


_ALL = ("voc07", "voc12", "coco")

#: Every difference from pfr in the paper configs (configs/_base_/{voc,coco}.yaml): those left on purpose, and
#: (with a ``key``) those a config key removes, listed for a run that sets the key otherwise.
PFR_DIFFERENCES: tuple[PfrDifference, ...] = (
    PfrDifference(
        "training scheme",
        "end to end (approximate joint training, Faster R-CNN Sec. 3.2), as pfr's "
        "experiments/scripts/faster_rcnn_end2end.sh:51-57",
        "the papers' tables come from 4-step alternating training (Faster R-CNN Sec. 3.2; ResNet App. A's "
        "separate RPN and Fast R-CNN steps): tools/train_faster_rcnn_alt_opt.py:228-319, "
        "stages of 80k/40k/80k/40k iterations (tools/train_faster_rcnn_alt_opt.py:80)",
        _ALL),
    PfrDifference(
        "background RoI range (model.roi.bg_iou_thresh_lo)",
        "[0.1, 0.5) on VOC: Fast R-CNN Sec. 2.3 (the range Faster R-CNN Sec. 4.2 sets its COCO [0, 0.5) against); "
        "pfr's default lib/fast_rcnn/config.py:58, which its experiment configs override",
        "[0.0, 0.5): BG_THRESH_LO 0.0 in both experiments/cfgs/faster_rcnn_end2end.yml:9 and "
        "experiments/cfgs/faster_rcnn_alt_opt.yml:3",
        ("voc07", "voc12"), key="model.roi.bg_iou_thresh_lo", pfr_value=0.0, default=RoIConfig.bg_iou_thresh_lo),
    PfrDifference(
        "horizontal flips",
        "each drawn image flipped with probability 0.5 (data.flip_prob)",
        "every image appended once flipped, both used each epoch: lib/fast_rcnn/train.py:117-118 "
        "(TRAIN.USE_FLIPPED, lib/fast_rcnn/config.py:61)",
        _ALL),
    PfrDifference(
        "07+12 / 07++12 schedule: images per iteration",
        "lr 0.001 for 60k and 0.0001 for 20k updates (Faster R-CNN Sec. 3.1.3's numbers) of 2 images each "
        "(solver.iter_size 2 of pfr's end-to-end solver, "
        "models/pascal_voc/VGG16/faster_rcnn_end2end/solver.prototxt:16): 160k images",
        "Faster R-CNN's 60k/20k count mini-batches of 1 image (Sec. 3.1.3: each from a single image; pfr's "
        "alternating solvers set no iter_size, e.g. "
        "stepsize 60000 in models/pascal_voc/VGG16/faster_rcnn_alt_opt/stage1_rpn_solver60k80k.pt:6): 80k images; pfr's "
        "end-to-end script trains VOC07 only (experiments/scripts/faster_rcnn_end2end.sh:27)",
        ("voc07", "voc12"), train_data=("07+12", "07++12")),
    PfrDifference(
        "COCO schedule and test set",
        "ResNet App. A: lr 0.001 for 240k, 0.0001 for 80k iterations of 16 images; train2014 -> val2014",
        "490k iterations (experiments/scripts/faster_rcnn_end2end.sh:39), step at 350k "
        "(stepsize 350000, models/coco/VGG16/faster_rcnn_end2end/solver.prototxt:5), tested on "
        "coco_2014_minival (experiments/scripts/faster_rcnn_end2end.sh:37)",
        ("coco",)),
    PfrDifference(
        "COCO: images per RPN update",
        "end to end, the RPN and the RoI head learn from the same 16 images per update (solver.reference_batch 16)",
        "ResNet App. A: on 8 GPUs the RPN step has a mini-batch of 8 images (1 per GPU), the Fast R-CNN step 16; "
        "pfr's COCO solver: 1 image x iter_size 2 (models/coco/VGG16/faster_rcnn_end2end/solver.prototxt:15)",
        ("coco",)),
    PfrDifference(
        "COCO crowd regions (data.coco_crowd)",
        "ignore: crowd boxes are never targets (torchvision's and Detectron's choice)",
        "as_ground_truth (the paper configs' setting): end-to-end training takes them as ground truth, "
        "lib/datasets/coco.py:267 gives a crowd box its class and lib/roi_data_layer/minibatch.py:37 keeps "
        "every box with a class",
        ("coco",), key="data.coco_crowd", pfr_value="as_ground_truth", default=DataConfig.coco_crowd),
    PfrDifference(
        "SGD momentum (solver.momentum_style)",
        "pytorch: the rate multiplies the momentum buffer at each step (torch.optim.SGD), so a rate step acts on "
        "the whole history at once",
        "caffe (the paper configs' setting): the rate sits inside the buffer (Caffe's SGDSolver, BVLC/caffe "
        "src/caffe/solvers/sgd_solver.cpp:232-234), the old rate's history decays over ~10 iterations after a step",
        _ALL, key="solver.momentum_style", pfr_value="caffe", default=SolverConfig.momentum_style),
    PfrDifference(
        "RPN objectness",
        "one logit per anchor, sigmoid and binary cross-entropy (torchvision's RPNHead: 9 outputs for 9 anchors)",
        "a 2-way softmax per anchor: rpn_cls_score num_output 18 for 9 anchors "
        "(models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt:398), SoftmaxWithLoss "
        "(models/pascal_voc/VGG16/faster_rcnn_end2end/train.prototxt:448); the same family of scores, "
        "parametrised twice",
        _ALL),
    PfrDifference(
        "box decoding and clipping",
        "boxes clipped to [0, W] x [0, H] (continuous coordinates), dw/dh clamped at log(1000/16) before exp "
        "(torchvision's BoxCoder)",
        "clipped to W - 1 / H - 1 (inclusive pixels, lib/fast_rcnn/bbox_transform.py:69-75), exp(dw) unclamped "
        "(lib/fast_rcnn/bbox_transform.py:48-49)",
        _ALL),
    PfrDifference(
        "input padding",
        "each batch padded to a multiple of 32 px (torchvision's GeneralizedRCNNTransform, size_divisible 32): "
        "a 1000-px side becomes 1024, 64 cells of the stride-16 map where pfr has 63",
        "no padding beyond the batch's largest image (lib/utils/blob.py:18-24; 1 image per pass: none)",
        _ALL),
    PfrDifference(
        "processes x images not dividing the reference batch",
        "solver.batch_rule accumulate rounds iter_size up and scales the rate linearly for the rest, and logs it: "
        "3 processes on COCO take 18 images per update at lr x 1.125 instead of 16 at 0.001",
        "1 GPU (VOC: 1 image x iter_size 2, models/pascal_voc/VGG16/faster_rcnn_end2end/solver.prototxt:16); "
        "ResNet App. A: 8 GPUs for COCO, 16 images per update",
        _ALL),
)


#: The paper's figures (percent): benchmark -> metric -> backbone -> value.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "voc07": {"mAP": {"vgg16": 73.2, "resnet101": 76.4}},
    "voc12": {"mAP": {"vgg16": 70.4, "resnet101": 73.8}},
    "coco": {"mAP@.5": {"vgg16": 41.5, "resnet101": 48.4}, "mAP@[.5,.95]": {"vgg16": 21.2, "resnet101": 27.2}},
}
PAPER_TRAIN_DATA = {"voc07": "07+12", "voc12": "07++12", "coco": "train"}
BENCHMARK_TITLES = {
    "voc07": "PASCAL VOC 2007 test (paper Table 7, mAP = VOC07 11-point)",
    "voc12": "PASCAL VOC 2012 test (paper Table 7, mAP = VOC2010+ area AP)",
    "coco": "COCO val (paper Table 8)",
    "own": "Own data (no paper figures: the paper's tables are for PASCAL VOC and COCO)",
}
#: Metrics shown for runs on their own data: VOC-rule and COCO evaluations.
_OWN_METRICS = ("mAP_11point", "mAP_area", "AP50", "AP")
_PAPER_BACKBONE_NAMES = {"vgg16": "VGG-16", "resnet101": "ResNet-101"}


@dataclass
class RunSummary:
    """One run: ``benchmark`` in {voc07, voc12, coco}; ``metrics`` metric name -> percent or None;
    ``config``: its config.yaml flattened to dotted keys (None when the run has no config.yaml)."""

    run_dir: str
    backbone: str
    train_data: str
    test_data: str
    benchmark: str
    metrics: dict[str, float | None]
    config: dict[str, Any] | None = None
    own_data: str | None = None  # why the run is on data of its own (then benchmark is "own"), else None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _as_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return "+".join(str(x) for x in v)
    return str(v)


def _voc_data_label(train: str | None) -> str | None:
    """'2007_trainval+2012_trainval' -> '07+12'; with 2007_test as well -> '07++12'."""
    if train is None:
        return None
    t = train.lower()
    has07, has12 = "2007" in t, "2012" in t
    if has07 and has12:
        return "07++12" if "2007_test" in t else "07+12"
    if has07 or has12:
        return "07" if has07 else "12"
    return train


def _own_data(data: dict, train: str | None, test: str | None) -> str | None:
    """Why a run's data is not one of the paper's benchmarks, or None (also when the config does not say)."""
    kind = _as_text(data.get("dataset"))
    if kind == "shapes":
        return "the synthetic shapes set"
    if data.get("classes"):
        return "data.classes chosen"
    if any(x and x.lower().endswith(".json") for x in ((train or "").split("+") + [test])):
        return "COCO JSON files of your own"
    if kind in (None, "voc") and test is not None and not any(y in test for y in ("2007", "2012")):
        return "VOC-format splits of your own" if kind == "voc" else None
    return None


def load_run(run_dir: str | os.PathLike) -> RunSummary:
    """Read ``eval.json`` and ``config.yaml`` of a run. ValueError (naming the file) when
    ``eval.json`` is missing, not JSON, or has neither the VOC nor the COCO schema."""
    run_dir = Path(run_dir)
    ev_path = run_dir / "eval.json"
    if not ev_path.is_file():
        raise ValueError(f"{ev_path}: not found")
    try:
        ev = json.loads(ev_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{ev_path}: not valid JSON ({exc})") from None
    if not isinstance(ev, dict):
        raise ValueError(f"{ev_path}: expected a JSON object")
    cfg: dict = {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
            cfg = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{cfg_path}: not valid YAML ({str(exc).splitlines()[0]})") from None

    backbone = _as_text(_get(cfg, "model", "backbone", "name")) or _as_text(_get(cfg, "model", "backbone")) or "?"
    data = _get(cfg, "data") if isinstance(_get(cfg, "data"), dict) else (_get(cfg, "dataset") or {})
    if not isinstance(data, dict):
        data = {"name": data}
    name = _as_text(data.get("name") or data.get("dataset") or _get(cfg, "dataset", "name"))
    train = _as_text(data.get("train") or data.get("train_sets") or data.get("train_names") or data.get("names"))
    test = _as_text(data.get("test") or data.get("test_set") or data.get("test_names") or data.get("val"))
    text = " ".join(x for x in (name, train, test) if x).lower()

    def pct(v: Any) -> float | None:
        return None if v is None else 100.0 * float(v)

    own = _own_data(data, train, test)
    if own is not None and "server_results" not in ev:
        if not any(k in ev for k in _OWN_METRICS):
            raise ValueError(f"{ev_path}: neither a VOC (mAP_11point/mAP_area) nor a COCO (AP/AP50) eval.json")
        metrics = {k: pct(ev.get(k)) for k in _OWN_METRICS if k in ev}
        return RunSummary(str(run_dir), backbone, train or "?", test or "?", "own", metrics,
                          _flatten(cfg) if cfg_path.is_file() else None, own_data=own)
    if "server_results" in ev:  # VOC 2012 test: scored by the evaluation server, not here
        benchmark, metrics, train_label = "voc12", {"mAP": None}, _voc_data_label(train) or "?"
    elif "AP50" in ev or "AP" in ev:
        benchmark = "coco"
        metrics = {"mAP@.5": pct(ev.get("AP50")), "mAP@[.5,.95]": pct(ev.get("AP"))}
        train_label = train or "?"
    elif "mAP_11point" in ev or "mAP_area" in ev:
        is12 = ("2012" in (test or "")) or ("voc12" in text and "2007" not in (test or ""))
        benchmark = "voc12" if is12 else "voc07"
        metrics = {"mAP": pct(ev.get("mAP_area") if is12 else ev.get("mAP_11point"))}
        train_label = _voc_data_label(train) or "?"
    else:
        raise ValueError(f"{ev_path}: neither a VOC (mAP_11point/mAP_area) nor a COCO (AP/AP50) eval.json")
    return RunSummary(str(run_dir), backbone, train_label, test or "?", benchmark, metrics,
                      _flatten(cfg) if cfg_path.is_file() else None)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(runs: Sequence[RunSummary]) -> dict[str, list[Any]]:
    """Setting -> its value in each run (in ``runs`` order, "<unset>" where a run lacks it), for every
    setting outside :data:`NETWORK_KEYS` whose values are not all equal. Runs without a config.yaml are
    left out (:func:`format_differences` names them)."""
    known = [r for r in runs if r.config is not None]
    keys = sorted({k for r in known for k in r.config} - NETWORK_KEYS)
    out = {}
    for k in keys:
        values = [r.config.get(k, "<unset>") for r in known]
        if any(v != values[0] for v in values[1:]):
            out[k] = values
    return out


def format_differences(runs: Sequence[RunSummary], *, markdown: bool = False) -> str:
    """The settings that differ beyond the network, or a line saying the runs differ only in it."""
    known = [r for r in runs if r.config is not None]
    lines = []
    missing = [r.run_dir for r in runs if r.config is None]
    if missing:
        lines.append("no config.yaml (settings not compared): " + ", ".join(missing))
    if len(known) < 2:
        return "\n".join(lines)
    diff = config_differences(runs)
    if not diff:
        lines.append("these runs differ only in the network (backbone, its weights and the RoI size).")
        return "\n".join(lines)
    lines.append("these runs differ in more than the network:")
    names = [r.run_dir for r in known]
    if markdown:
        lines += ["", "| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(str(v) for v in vals) + " |" for k, vals in diff.items()]
    else:
        width = max(len(k) for k in diff)
        lines += [f"  {k:<{width}}  " + "  ".join(f"{n}={v}" for n, v in zip(names, vals)) for k, vals in diff.items()]
    return "\n".join(lines)


def _applies(d: PfrDifference, r: RunSummary) -> str | None:
    """"" when ``d`` applies to run ``r`` (with a key: the run's value of it), None when it does not."""
    if r.benchmark not in d.benchmarks or (d.train_data is not None and r.train_data not in d.train_data):
        return None
    if d.key is None:
        return ""
    value = None if r.config is None else r.config.get(d.key, d.default)
    return None if value is None or value == d.pfr_value else str(value)


def pfr_differences(runs: Sequence[RunSummary]) -> list[tuple[list[str], list[tuple[PfrDifference, str]]]]:
    """The entries of :data:`PFR_DIFFERENCES` that apply to each run (its benchmark and training data among the
    entry's and, for an entry with a ``key``, a config that sets the key to another value than pfr's), grouped:
    ``[(run dirs, [(difference, the runs' value of its key or "")])]``, runs with the same list together, in
    the order of ``runs``; runs to which none applies are left out."""
    groups: dict[tuple, list[str]] = {}
    for r in runs:
        found = tuple((d, v) for d in PFR_DIFFERENCES if (v := _applies(d, r)) is not None)
        if found:
            groups.setdefault(found, []).append(r.run_dir)
    return [(names, list(found)) for found, names in groups.items()]


def format_pfr_differences(runs: Sequence[RunSummary], *, markdown: bool = False) -> str:
    """Under each run (runs with the same list together), the differences from py-faster-rcnn that apply to
    it, each with its sources."""
    found = pfr_differences(runs)
    if not found:
        return ""
    lines = [f"differences from py-faster-rcnn ({PFR_COMMIT}):"]
    for names, diffs in found:
        lines.append(f"{'**' if markdown else '  '}{', '.join(names)}{'**' if markdown else ''}:")
        if markdown:
            lines.append("")
        for d, value in diffs:
            what = f"{d.what} = {value}" if value else d.what
            lines.append(f"{'- ' if markdown else '    - '}{what}: here {d.here}; pfr: {d.pfr}")
        if markdown:
            lines.append("")
    return "\n".join(lines).rstrip()


def _own_rows(runs: Sequence[RunSummary]) -> list[list[str]]:
    names = [m for m in _OWN_METRICS if any(m in r.metrics for r in runs)]
    rows = [["source", "backbone", "train data", "test data"] + names]
    for r in runs:
        rows.append([r.run_dir, r.backbone, r.train_data, r.test_data]
                    + ["-" if r.metrics.get(m) is None else f"{r.metrics[m]:.1f}" for m in names])
    return rows


def _text_columns(bench: str) -> int:
    return 4 if bench == "own" else 3


def compare_rows(runs: Sequence[RunSummary]) -> dict[str, list[list[str]]]:
    """Rows per benchmark: the paper's rows first, then each run with its deltas; runs on their own data
    ("own") with their numbers only."""
    tables: dict[str, list[list[str]]] = {}
    own = [r for r in runs if r.benchmark == "own"]
    if own:
        tables["own"] = _own_rows(own)
    for bench in ("voc07", "voc12", "coco"):
        these = [r for r in runs if r.benchmark == bench]
        if not these:
            continue
        metric_names = list(PAPER[bench])
        header = ["source", "backbone", "train data"] + metric_names + [f"Δ {m}" for m in metric_names]
        rows = [header]
        for bb in ("vgg16", "resnet101"):
            rows.append(["paper", _PAPER_BACKBONE_NAMES[bb], PAPER_TRAIN_DATA[bench]]
                        + [f"{PAPER[bench][m][bb]:.1f}" for m in metric_names] + [""] * len(metric_names))
        for r in these:
            ref_bb = r.backbone.lower().replace("-", "").replace("_", "")
            marker = ""
            if ref_bb not in ("vgg16", "resnet101"):
                ref_bb, marker = "resnet101", " vs R101"
            values, deltas = [], []
            for m in metric_names:
                v = r.metrics.get(m)
                values.append("n/a" if v is None else f"{v:.1f}")
                deltas.append("n/a" if v is None else f"{v - PAPER[bench][m][ref_bb]:+.1f}{marker}")
            rows.append([r.run_dir, r.backbone, r.train_data] + values + deltas)
        tables[bench] = rows
    return tables


def format_compare_text(runs: Sequence[RunSummary]) -> str:
    out = []
    for bench, rows in compare_rows(runs).items():
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        out.append(BENCHMARK_TITLES[bench])
        for k, row in enumerate(rows):
            out.append("  ".join(cell.ljust(w) if c < _text_columns(bench) else cell.rjust(w)
                                 for c, (cell, w) in enumerate(zip(row, widths))))
            if k == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    diff = format_differences(runs)
    if diff:
        out.append(diff)
    pfr = format_pfr_differences(runs)
    if pfr:
        out.append(pfr)
    return "\n".join(out).rstrip() + "\n"


def format_compare_markdown(runs: Sequence[RunSummary]) -> str:
    out = []
    for bench, rows in compare_rows(runs).items():
        out.append(f"### {BENCHMARK_TITLES[bench]}\n")
        out.append("| " + " | ".join(rows[0]) + " |")
        out.append("|" + "|".join("---" if c < _text_columns(bench) else "---:" for c in range(len(rows[0]))) + "|")
        for row in rows[1:]:
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        out.append("")
    diff = format_differences(runs, markdown=True)
    if diff:
        out += [diff, ""]
    pfr = format_pfr_differences(runs, markdown=True)
    if pfr:
        out += [pfr, ""]
    return "\n".join(out)
