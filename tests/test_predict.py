"""tools/predict.py writes PNGs and a JSON of detections in original-image pixels."""
import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np

from _engine_helpers import write_tiny_config
from detres.config import load_config
from detres.tasks.detection import run_train

ROOT = Path(__file__).resolve().parents[1]


def _predict_main(argv):
    spec = importlib.util.spec_from_file_location("predict_tool", ROOT / "tools" / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_predict_writes_png_and_json(tmp_path, capsys):
    cfg_path = write_tiny_config(tmp_path)
    run_train(load_config(cfg_path, ["solver.max_iter=1", "solver.steps=[]", "test.eval_period=0", "test.num_vis_images=0"]),
                  progress=False)
    # a non-square image of another size: boxes must come back in ITS pixels
    img = np.full((50, 90, 3), 128, np.uint8)
    cv2.rectangle(img, (10, 10), (40, 40), (255, 0, 0), -1)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    out = tmp_path / "pred"
    rc = _predict_main([str(cfg_path), str(tmp_path / "out" / "model_final.pth"), str(tmp_path / "a.jpg"),
                        str(tmp_path / "data" / "shapes" / "JPEGImages" / "000000.jpg"),
                        "--out", str(out), "--score-thresh", "0"])
    assert rc == 0
    assert (out / "a.png").read_bytes()[:4] == b"\x89PNG" and (out / "000000.png").is_file()
    drawn = cv2.imread(str(out / "a.png"))
    assert drawn.shape == (50, 90, 3)  # drawn on the original image
    recs = json.loads((out / "predictions.json").read_text())
    assert [os.path.basename(r_["image"]) for r_ in recs] == ["a.jpg", "000000.jpg"]
    assert recs[0]["height"] == 50 and recs[0]["width"] == 90
    for d in recs[0]["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 90 and 0 <= y1 <= y2 <= 50
        assert d["class"] in ("circle", "square", "triangle") and 0 <= d["score"] <= 1
    # a bad checkpoint gives a one-line error naming it
    (tmp_path / "bad.pth").write_bytes(b"nope")
    capsys.readouterr()
    rc = _predict_main([str(cfg_path), str(tmp_path / "bad.pth"), str(tmp_path / "a.jpg"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.pth" in err[0]
