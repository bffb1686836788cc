"""tools/model_stats.py: multiply-adds of the msra ResNets within 2% of the paper's Table 1 and of VGG-16 within 2%
of the paper's 15.3 billion (the one Table 1 test)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: He et al. (2015): Table 1 (ResNets) and Sec. 4.1 (VGG-16), multiply-adds x 1e9 at 224x224
PAPER_GFLOPS = {"resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3, "vgg16": 15.3}


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
        if len(parts) == 6 and parts[0] in PAPER_GFLOPS:
            rows[(parts[0], parts[1])] = (float(parts[2]), float(parts[3]), float(parts[4]))
    return rows


def test_table1_within_two_percent(tool, capsys):
    argv = ["--backbones", "resnet50", "resnet101", "resnet152", "vgg16", "--styles", "msra", "--no-detector"]
    assert tool.main(argv) == 0
    rows = _parse(capsys.readouterr().out)
    # VGG-16 has one style (torchvision's layout is the original's)
    assert set(rows) == {("resnet50", "msra"), ("resnet101", "msra"), ("resnet152", "msra"), ("vgg16", "pytorch")}
    for (name, _), (params_m, gflops, paper) in rows.items():
        assert paper == PAPER_GFLOPS[name]  # the tool prints the paper's figure beside its own count
        assert abs(gflops - paper) / paper < 0.02, (name, gflops, paper)
    assert rows[("resnet50", "msra")][0] == pytest.approx(25.6, abs=0.1)  # torchvision's ResNet-50: 25.6M
    assert rows[("vgg16", "pytorch")][0] == pytest.approx(138.4, abs=0.1)  # torchvision's VGG-16: 138.4M


def test_pytorch_style_costs_more_and_detector_counts_its_rois():
    from detres.backbones.stats import classifier_stats
    from detres.modeling.stats import detector_stats

    msra = classifier_stats("resnet50", "msra", size=64)
    pytorch = classifier_stats("resnet50", "pytorch", size=64)
    assert pytorch["gflops"] > msra["gflops"] and msra["paper_gflops"] is None
    det = detector_stats("resnet18", "msra", height=64, width=96, proposals=20)
    det10 = detector_stats("resnet18", "msra", height=64, width=96, proposals=10)
    assert det["rois"] == 20 and det10["rois"] == 10
    # 10 more RoIs cost 10 x (conv5 on one 14x14 RoI + the predictor's two linear layers), counted by hand:
    # ResNet-18 msra conv5 on [1, 256, 14, 14] -> 7x7, then 512 -> 21 scores and 512 -> 84 box deltas
    from detres.backbones import build_c4
    from detres.backbones.stats import count_gflops
    _, head = build_c4("resnet18", style="msra")
    per_roi = count_gflops(head.eval(), input_shape=(1, 256, 14, 14)) + 512 * (21 + 84) / 1e9
    assert det["gflops"] - det10["gflops"] == pytest.approx(10 * per_roi, rel=1e-6)
    assert det10["gflops"] > 10 * per_roi  # the trunk and RPN head come on top
