"""tools/model_stats.py: multiply-adds of the msra ResNets within 2% of the paper's Table 1."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from detres.backbones.stats import PAPER_TABLE1_GFLOPS

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("_tool_model_stats", ROOT / "tools" / "model_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(text):
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0].startswith("resnet"):
            rows[(parts[0], parts[1])] = (float(parts[2]), float(parts[3]), float(parts[4]))
    return rows


def test_table1_within_two_percent(tool, capsys):
    assert tool.main(["--backbones", "resnet50", "resnet101", "resnet152", "--styles", "msra", "--no-detector"]) == 0
    rows = _parse(capsys.readouterr().out)
    assert set(rows) == {("resnet50", "msra"), ("resnet101", "msra"), ("resnet152", "msra")}
    for (name, _), (params_m, gflops, paper) in rows.items():
        assert paper == PAPER_TABLE1_GFLOPS[name]
        assert abs(gflops - paper) / paper < 0.02, (name, gflops, paper)
    assert rows[("resnet50", "msra")][0] == pytest.approx(25.6, abs=0.1)  # torchvision's ResNet-50: 25.6M


def test_pytorch_style_costs_more_and_detector_counts_its_rois():
    from detres.backbones.stats import classifier_stats
    from detres.modeling.stats import detector_stats

    msra = classifier_stats("resnet50", "msra", size=64)
    pytorch = classifier_stats("resnet50", "pytorch", size=64)
    assert pytorch["gflops"] > msra["gflops"] and msra["paper_gflops"] is None
    det = detector_stats("resnet18", "msra", height=64, width=96, proposals=20)
    assert det["rois"] == 20 and det["gflops"] > 0
