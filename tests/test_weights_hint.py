"""A missing backbone weights file names the two ways out (random weights, or converting a checkpoint)."""
import importlib.util
from pathlib import Path

import pytest

from _engine_helpers import write_tiny_config
from detres.backbones.weights import read_weights

ROOT = Path(__file__).resolve().parents[1]


def test_missing_weights_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_weights(tmp_path / "resnet50_msra.pth")
    msg = str(e.value)
    assert msg.startswith(f"weights file not found: {tmp_path / 'resnet50_msra.pth'} (")
    assert "model.backbone.weights=null" in msg and "tools/convert_weights.py" in msg


def test_the_training_tool_says_it_in_one_line(tmp_path, capsys):
    cfg = write_tiny_config(tmp_path, model={"backbone": {"weights": str(tmp_path / "none.pth")}})
    spec = importlib.util.spec_from_file_location("train_det_tool", ROOT / "tools" / "train_det.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(cfg), "--no-progress"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "none.pth" in err[0] and "model.backbone.weights=null" in err[0]


def test_weights_with_a_flipped_bit_or_nan_meta_are_refused(tmp_path):
    """A copied weights file with one flipped byte fails its zip CRC by name; NaN in the meta's mean is refused
    (it would give NaN losses at iteration 1 with a misleading 'lower the learning rate' hint)."""
    import math

    import pytest
    import torch

    from detres.backbones import build_classifier, read_weights
    from detres.backbones.weights import TORCHVISION_META

    net = build_classifier("resnet18", num_classes=10)
    good = tmp_path / "w.pth"
    torch.save({"model": net.state_dict(), "meta": dict(TORCHVISION_META)}, good)
    read_weights(good)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped.pth: damaged file"):
        read_weights(bad)
    nan = tmp_path / "nan.pth"
    torch.save({"model": net.state_dict(), "meta": {**TORCHVISION_META, "mean": [math.nan, 0.4, 0.4]}}, nan)
    with pytest.raises(ValueError, match=r"nan.pth: meta mean must be 3 finite numbers"):
        read_weights(nan)
