"""The README's example of detres.backbones inside another torchvision detector really runs."""
import importlib.util
from pathlib import Path

import torch


def test_retinanet_fpn_example_trains_and_predicts():
    path = Path(__file__).resolve().parents[1] / "examples" / "retinanet_fpn.py"
    spec = importlib.util.spec_from_file_location("retinanet_fpn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build_retinanet(num_classes=3, name="resnet18")
    assert model.backbone.out_channels == 256
    model.train()
    losses = model([torch.rand(3, 128, 160)], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([1])}])
    assert set(losses) == {"classification", "bbox_regression"} and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        assert set(model([torch.rand(3, 128, 160)])[0]) == {"boxes", "labels", "scores"}
