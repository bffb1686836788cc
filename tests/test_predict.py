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
from detres.modeling.detector import boxes_to_original
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
    torch.testing.assert_close(outs[0]["boxes"], outs[2]["boxes"])  # the same image, however given

    d = predictor.cfg.data
    scale = min(d.min_size / 50, d.max_size / 90)  # the data pipeline's resize of this 50 x 90 image
    resized = (round(50 * scale), round(90 * scale))

    class Known(torch.nn.Module):  # detections at known places of the RESIZED input, mapped as the detector does
        def forward(self, images, targets=None, original_sizes=None):
            h, w = images[0].shape[-2:]
            assert (h, w) == resized and tuple(original_sizes[0].tolist()) == (50, 90)
            boxes = torch.tensor([[0.0, 0.0, w, h], [w / 4, h / 4, w / 2, h / 2]])
            return [{"boxes": boxes_to_original(boxes, (h, w), original_sizes[0]),
                     "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.8])}]

    predictor.model = Known()
    out = predictor(img)  # mapped back to the ORIGINAL 90 x 50 pixels, per axis
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0.0, 90.0, 50.0], [22.5, 12.5, 45.0, 25.0]]))
    assert out["labels"].tolist() == [2, 1] and out["class_names"] == ["square", "circle"]
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
    assert _predict_main([str(run_dir), str(folder), str(folder / "im1.*"), "--out", str(out), "--vis-thresh", "0"]) == 0
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


# ------------------------------------------------------------------------------------------------
# COCO-JSON data with non-contiguous category ids: predict -> tools/eval.py round trip
# ------------------------------------------------------------------------------------------------
#: (file_name, (w, h), [(category_id, [x, y, w, h])]); a nested folder, an image with no box
COCO_IMAGES = [("a.jpg", (80, 60), [(7, [10, 5, 30, 20])]),
               ("sub/b.jpg", (60, 80), [(42, [5, 10, 40, 50])]),
               ("c.jpg", (50, 50), [])]


def _write_coco_folder(root):
    images, anns = [], []
    for k, (name, (w, h), boxes) in enumerate(COCO_IMAGES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((h, w, 3), 40 + 60 * k, np.uint8))
        images.append({"id": 100 + k, "file_name": name, "width": w, "height": h})
        for cid, box in boxes:
            anns.append({"id": len(anns) + 1, "image_id": 100 + k, "category_id": cid, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": 7, "name": "cup"}, {"id": 42, "name": "pen"}]
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann


class _HandMade(torch.nn.Module):
    """Stands in for the detector: known detections per input size (transformed pixels). Image a: its cup;
    image b: its pen; image c (no object): a pen scoring ABOVE b's true pen, a false positive."""

    def __init__(self, scale):
        super().__init__()
        s = scale
        self.table = {
            (48, 64): ([[10 * s, 5 * s, 40 * s, 25 * s]], [1], [0.9]),
            (64, 48): ([[5 * s, 10 * s, 45 * s, 60 * s]], [2], [0.6]),
            (64, 64): ([[3.0, 3.0, 30.0, 30.0]], [2], [0.8]),
        }

    def forward(self, images, targets=None, original_sizes=None):
        out = []
        for im, orig in zip(images, original_sizes):
            boxes, labels, scores = self.table[tuple(im.shape[1:])]
            out.append({"boxes": boxes_to_original(torch.tensor(boxes), im.shape[1:], orig),
                        "labels": torch.tensor(labels), "scores": torch.tensor(scores)})
        return out


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coco_pred")
    data = tmp / "shop"
    ann = _write_coco_folder(data)
    cfg_path = write_tiny_config(tmp, model={"roi": {"score_thresh": 0.05}},
                                 data={"dataset": "coco", "train": [str(ann)], "test": str(ann)})
    run_train(load_config(cfg_path, ["solver.max_iter=1", "solver.steps=[]", "test.eval_period=0",
                                     "test.num_vis_images=1", "test.vis_thresh=1.0"]), progress=False)
    return tmp / "out", data, ann


def _eval_main(argv):
    spec = importlib.util.spec_from_file_location("eval_tool", ROOT / "tools" / "eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(a) for a in argv])


@pytest.mark.parametrize("with_ann_file", [True, False])
def test_predict_then_eval_round_trip_with_the_datas_ids(coco_run, tmp_path, monkeypatch, with_ann_file, capsys):
    from detres import Predictor
    from detres.tasks import predictor as predictor_module

    run_dir, data, ann = coco_run
    predictor = Predictor(run_dir)
    assert predictor.class_names == ("cup", "pen") and predictor.label_to_cat_id == {1: 7, 2: 42}
    real_init = predictor_module.Predictor.__init__

    def init(self, *a, **k):  # the real checkpoint and config, the hand-made detector (scale 0.8 = 64/80)
        real_init(self, *a, **k)
        self.model = _HandMade(0.8)
    monkeypatch.setattr(predictor_module.Predictor, "__init__", init)
    out = tmp_path / "pred"
    argv = [str(run_dir), str(data), "--out", str(out)] + (["--ann-file", str(ann)] if with_ann_file else [])
    assert _predict_main(argv) == 0
    assert "image ids of" in capsys.readouterr().out
    results = json.loads((out / "predictions.json").read_text())
    assert sorted((r["image_id"], r["category_id"]) for r in results) == [(100, 7), (101, 42), (102, 42)]
    a = next(r for r in results if r["image_id"] == 100)
    assert a["bbox"] == pytest.approx([10, 5, 30, 20], abs=1e-3) and a["category"] == "cup"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "c.png", "sub/b.png"]
    # cup: AP 1; pen: its false positive outranks its true box -> precision 1/2 at every recall -> AP 0.5
    assert _eval_main(["--dataset", "coco", "--results", out / "predictions.json", "--ann-file", ann,
                       "--json-out", tmp_path / "m.json"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["per_category"] == {"cup": pytest.approx(1.0), "pen": pytest.approx(0.5)}
    assert metrics["AP"] == pytest.approx(0.75)


def test_results_keep_low_scores_and_pictures_use_vis_thresh(coco_run, tmp_path, monkeypatch):
    from detres.tasks import predictor as predictor_module
    from detres.tasks.predict import predict_files

    run_dir, data, ann = coco_run
    predictor = predictor_module.Predictor(run_dir)
    predictor.model = _HandMade(0.8)
    assert predictor.vis_thresh == 1.0 and predictor.score_thresh == 0.05  # the config's test.vis_thresh
    s = predict_files(predictor, [str(data / "a.jpg"), str(data / "sub" / "b.jpg")], tmp_path / "p", vis_thresh=0.95)
    assert [r["score"] for r in s.results] == [0.9, 0.6]  # all kept in the JSON, though none is drawn
    assert s.image_ids == f"image ids of {ann}"  # the run's test set lists both images
    from detres.evaluation.visualize import draw_detections
    rgb = cv2.imread(str(data / "a.jpg"))[:, :, ::-1].copy()
    plain = draw_detections(rgb, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), None, ["cup"],
                            score_thresh=None)  # no caption
    drawn = cv2.imread(str(tmp_path / "p" / "a.png"))[:, :, ::-1]
    # a caption "no detection >= 0.95 (best: cup 0.900)" on a black tag at the top left; the rest untouched
    diff = np.abs(drawn.astype(int) - plain.astype(int)).max(axis=2)
    assert (drawn[1, 1] == 0).all() and plain[1, 1].min() > 30
    assert diff[:30, :200].any() and not diff[60:].any() and not diff[:, 400:].any()


def test_trainer_pictures_use_test_vis_thresh_and_the_file_name(coco_run):
    run_dir, _, _ = coco_run
    assert [p.name for p in (run_dir / "vis").iterdir()] == ["a.png"]  # a.jpg (image id 100)
    drawn = cv2.imread(str(run_dir / "vis" / "a.png"))
    assert (drawn[1, 1] == 0).all() and drawn[-1, -1].min() > 30  # the "no detection >= 1" caption's tag


def test_nested_folders_recursive_globs_and_same_names(tmp_path):
    from detres.tasks.predict import expand_images, output_names

    for rel in ["a/x.jpg", "b/x.jpg", "b/deep/y.PNG", "b/x.png", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = expand_images([str(tmp_path)])
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == ["a/x.jpg", "b/deep/y.PNG", "b/x.jpg", "b/x.png"]
    assert expand_images([str(tmp_path / "**" / "*.jpg")]) == [str(tmp_path / "a/x.jpg"), str(tmp_path / "b/x.jpg")]
    assert expand_images([str(tmp_path / "a"), str(tmp_path / "a" / "x.jpg")]) == [str(tmp_path / "a")
                                                                                   + "/x.jpg"]  # each once
    assert output_names(found) == ["a/x.png", "b/deep/y.png", "b/x.jpg.png", "b/x.png.png"]


def test_unreadable_file_is_skipped_by_name_and_the_exit_code_says_so(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.jpg"), np.full((40, 50, 3), 90, np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred"
    assert _predict_main([str(run_dir), str(folder), "--out", str(out)]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert err == [f"error: 1 of 2 images could not be read and were skipped: {folder / 'broken.jpg'}"]
    assert [p.name for p in out.glob("*.png")] == ["good.png"]
    assert all(r["image_id"] == str(folder / "good.jpg") for r in json.loads((out / "predictions.json").read_text()))
    (folder / "good.jpg").write_bytes(b"")  # none readable: one error line naming a file, exit 2
    assert _predict_main([str(run_dir), str(folder), "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "broken.jpg: cannot decode image" in err[0] and "and 1 other image" in err[0]


def test_out_never_replaces_inputs_or_foreign_files(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.png"), np.full((40, 50, 3), 90, np.uint8))
    before = (folder / "x.png").read_bytes()
    for extra in ([], ["--overwrite"]):  # an input image is never replaced
        assert _predict_main([str(run_dir), str(folder), "--out", str(folder)] + extra) == 2
        assert "would replace the input image" in capsys.readouterr().err
    assert (folder / "x.png").read_bytes() == before
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.json").write_text("mine")
    assert _predict_main([str(run_dir), str(folder), "--out", str(out)]) == 2
    assert "was not written by tools/predict.py" in capsys.readouterr().err
    assert (out / "predictions.json").read_text() == "mine"
    assert _predict_main([str(run_dir), str(folder), "--out", str(out), "--overwrite"]) == 0
    assert _predict_main([str(run_dir), str(folder), "--out", str(out)]) == 0  # predict's own files: replaced


def test_ann_file_that_does_not_list_an_image_is_named(coco_run, tmp_path, capsys):
    run_dir, data, ann = coco_run
    other = tmp_path / "other.jpg"
    cv2.imwrite(str(other), np.full((30, 30, 3), 90, np.uint8))
    assert _predict_main([str(run_dir), str(other), "--ann-file", str(ann), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.jpg: not an image of" in err[0]
