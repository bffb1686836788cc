"""detres.Predictor and tools/predict.py: detections in original-image pixels, pictures, COCO-results JSON."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from _engine_helpers import write_tiny_config
from detres.config import load_config
from detres.tasks.detection import run_train

ROOT = Path(__file__).resolve().parents[1]


def _predict_main(argv):
    spec = importlib.util.spec_from_file_location("predict_tool", ROOT / "tools" / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    cfg_path = write_tiny_config(tmp, model={"roi": {"score_thresh": 0.0}})
    run_train(load_config(cfg_path, ["solver.max_iter=1", "solver.steps=[]", "test.eval_period=0",
                                     "test.num_vis_images=0"]), progress=False)
    return tmp / "out"


def test_predictor_takes_paths_pil_and_arrays(run_dir, tmp_path):
    from detres import Predictor

    predictor = Predictor(run_dir)
    assert predictor.class_names == ("circle", "square", "triangle")  # read from the checkpoint
    img = np.full((50, 90, 3), 128, np.uint8)
    cv2.rectangle(img, (10, 10), (40, 40), (255, 0, 0), -1)
    cv2.imwrite(str(tmp_path / "a.png"), img[:, :, ::-1])
    outs = [predictor(tmp_path / "a.png"), predictor(Image.fromarray(img)), predictor(img)]
    for out in outs:
        assert set(out) == {"boxes", "labels", "scores", "class_names"}
        assert out["boxes"].shape == (len(out["labels"]), 4) and len(out["class_names"]) == len(out["labels"])
        if len(out["labels"]):
            b = out["boxes"]
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= 90).all() and (b[:, 3] <= 50).all()  # ORIGINAL pixels
            assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    torch.testing.assert_close(outs[0]["boxes"], outs[2]["boxes"])  # the same image, however given
    gray = predictor(img[:, :, 0])  # a grayscale array is repeated to RGB
    assert gray["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="uint8"):
        predictor(img.astype(np.float32))


def test_tool_takes_folders_and_globs(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (h, w) in enumerate([(50, 90), (70, 40)]):
        cv2.imwrite(str(folder / f"im{i}.jpg"), np.full((h, w, 3), 60 + 50 * i, np.uint8))
    out = tmp_path / "pred"
    assert _predict_main([str(run_dir), str(folder), str(folder / "im1.*"), "--out", str(out), "--score-thresh", "0"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png"]
    drawn = cv2.imread(str(out / "im0.png"))
    assert min(drawn.shape[:2]) >= 480 and drawn.shape[1] / drawn.shape[0] == pytest.approx(90 / 50, rel=0.02)
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} <= {str(folder / "im0.jpg"), str(folder / "im1.jpg")}
    for r in results:  # COCO results format, original pixels
        x, y, w, h = r["bbox"]
        assert set(r) == {"image_id", "category_id", "category", "bbox", "score"} and w >= 0 and h >= 0
        assert r["category"] in ("circle", "square", "triangle") and 1 <= r["category_id"] <= 3
    capsys.readouterr()
    assert _predict_main([str(run_dir), str(tmp_path / "none" / "*.jpg"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no file matches" in err[0]
