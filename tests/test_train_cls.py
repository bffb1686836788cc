"""tools/train_cls.py end to end on a tiny ImageFolder, and the hand-over of its checkpoint to detection."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from detres.backbones import build_c4, read_weights
from detres.config import ClsConfig, load_config
from detres.benchmarks.train import time_cls_step
from detres.tasks.classification import cls_meta

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("n0001", "n0002", "n0003")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_imagenet(root: pathlib.Path, per_class: int = 4) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for ci, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(36, 56, size=2)
                arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
                arr[..., ci] += 150  # the class is the dominant colour: learnable, but we only train 4 steps
                Image.fromarray(arr).save(d / f"{c}_{i}.JPEG", format="JPEG")
    return root


def tiny_overrides(data_root, out, *, name="resnet18", style="pytorch", max_iter=4):
    steps = "[3]" if max_iter > 3 else "[]"
    return [f"data.root={data_root}", f"output_dir={out}", f"model.name={name}", f"model.style={style}",
            f"model.num_classes={len(CLASSES)}", "data.min_scale=36", "data.max_scale=44", "data.crop=32",
            "data.test_resize=36", "data.num_workers=0", "solver.ims_per_batch=4", "solver.reference_batch=4",
            "solver.base_lr=0.01", f"solver.max_iter={max_iter}", f"solver.steps={steps}", "solver.checkpoint_period=2",
            "solver.log_period=1", "test.eval_period=0", "test.ims_per_batch=4", "solver.amp=bf16",
            # the paper's per-pixel mean, plateau rule and multi-scale test have tests of their own
            "data.mean_image=false", "test.multi_scale=[]", "solver.lr_schedule=steps"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    data = make_imagenet(tmp / "imagenet")
    out = tmp / "run"
    tool = _tool("train_cls")
    assert tool.main([str(ROOT / "configs" / "imagenet_r50.yaml"), *tiny_overrides(data, out), "--no-progress"]) == 0
    return data, out, tool


def test_run_directory_and_eval_json(trained):
    _, out, _ = trained
    for name in ("config.yaml", "metrics.jsonl", "model_final.pth", "eval.json"):
        assert (out / name).is_file(), name
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_images"] == 2 * len(CLASSES)
    cfg = load_config(out / "config.yaml")
    # eval.json is the final model's score on the val set: evaluating model_final.pth again gives it back
    from detres.tasks.classification import build_datasets, build_model, build_eval_fn

    model = build_model(cfg)
    model.load_state_dict(torch.load(out / "model_final.pth", weights_only=True)["model"])
    _, val_set = build_datasets(cfg, train=False)
    again = build_eval_fn(cfg, val_set, device=torch.device("cpu"))(model)
    assert set(again) == set(ev) >= {"top1_error_center", "top5_error_center", "top1_error_10crop", "top5_error_10crop"}
    for k in again:
        assert again[k] == pytest.approx(ev[k]), k
    assert isinstance(cfg, ClsConfig) and cfg.model.name == "resnet18" and cfg.solver.max_iter == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_cls" in r for r in rows)


def test_checkpoint_is_a_detection_backbone(trained):
    from detres.modeling import BackboneSpec, DetectorSpec, build_detector

    _, out, _ = trained
    ckpt = out / "model_final.pth"
    state, meta = read_weights(ckpt)
    assert "fc.weight" in state and "layer4.1.conv2.weight" in state
    assert meta["channel_order"] == "RGB" and meta["input_range"] == 1.0 and meta["style"] == "pytorch"
    assert meta["mean"] == cls_meta(load_config(out / "config.yaml"))["mean"]
    trunk, head = build_c4("resnet18", weights=ckpt)
    torch.testing.assert_close(trunk.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(head.layer4[0].bn1.running_var, state["layer4.0.bn1.running_var"])
    det = build_detector(DetectorSpec(backbone=BackboneSpec(name="resnet18", weights=ckpt)), 4).eval()
    assert det.transform.image_mean == pytest.approx(meta["mean"]) and not det.transform.bgr
    # the detector's trunk on its own normalisation is the trained classifier's conv1..conv4 on (x - mean) / std
    # by hand: the checkpoint's weights, BN statistics and preprocessing all reach the detector
    from detres.backbones import build_classifier

    cls = build_classifier("resnet18", num_classes=len(CLASSES), norm="bn").eval()
    cls.load_state_dict(state)
    x = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(meta["mean"]).view(3, 1, 1), torch.tensor(meta["std"]).view(3, 1, 1)
    with torch.no_grad():
        y = cls.maxpool(cls.relu(cls.bn1(cls.conv1(((x - mean) / std)[None]))))
        expected = cls.layer3(cls.layer2(cls.layer1(y)))
        got = det.backbone(det.transform.normalize(x)[None])["res4"]
        out_det = det([x])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)  # FrozenBN vs BN: rounding (max 1e-3 of 10)
    # detections: boxes inside the 96x64 image, labels among the 3 classes, scores sorted, at the test threshold
    boxes, labels, scores = out_det[0]["boxes"], out_det[0]["labels"], out_det[0]["scores"]
    assert boxes.shape == (len(labels), 4) and len(labels) == len(scores)
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 96) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 64)).all()
    assert ((boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])).all()
    assert ((labels >= 1) & (labels <= 3)).all() and (scores >= det.roi_heads.score_thresh).all()


def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    data, out, tool = trained
    before = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"]
    args = [str(ROOT / "configs" / "imagenet_r50.yaml"), *tiny_overrides(data, out, max_iter=5), "--resume",
            "--no-progress"]
    assert tool.main(args) == 0
    after = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert before == 4 and after["iteration"] == 5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss_cls" in r][-1] == 5


def test_msra_style_classifier_hands_over_with_its_style(tmp_path):
    data = make_imagenet(tmp_path / "imagenet", per_class=2)
    from detres.tasks.classification import run_train

    cfg = load_config(ROOT / "configs" / "imagenet_r50.yaml",
                      tiny_overrides(data, tmp_path / "run", name="resnet50", style="msra", max_iter=1)
                      # BN over 2 images of 32 px (1x1 maps in conv5) diverges at lr 0.01; this test checks the style
                      + ["test.ten_crop=false", "solver.base_lr=1e-5"])
    cfg.solver.ims_per_batch = cfg.solver.reference_batch = 2
    result = run_train(cfg, device="cpu", progress=False)
    assert "top1_error_10crop" not in result["eval"]
    trunk, _ = build_c4("resnet50", weights=tmp_path / "run" / "model_final.pth", style="msra")
    assert trunk.layer2[0].conv1.stride == (2, 2)  # stride in the 1x1, as trained
    with pytest.raises(ValueError, match="msra"):
        build_c4("resnet50", weights=tmp_path / "run" / "model_final.pth", style="pytorch")


def test_bad_config_and_step_timing(tmp_path, capsys):
    tool = _tool("train_cls")
    assert tool.main([str(ROOT / "configs" / "imagenet_r50.yaml"), "solver.base_lrr=1"]) == 2
    assert "base_lr" in capsys.readouterr().err
    timing = time_cls_step(str(ROOT / "configs" / "imagenet_r50.yaml"),
                             overrides=["model.name=resnet18", "model.num_classes=10", "data.crop=32"],
                             batch_size=2, steps=1, warmup=0)
    assert timing["median_s"] > 0 and timing["batch_size"] == 2


def test_checkpoint_fits_every_resnet_detection_config(trained):
    """Each shipped detection config, pointed at the classifier checkpoint, builds its detector."""

    from detres.tasks.detection import build_model

    _, out, _ = trained
    ckpt = out / "model_final.pth"
    built = 0
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if load_config(path).task != "detection":  # the task may come from the _base_ file
            continue
        cfg = load_config(path, [f"model.backbone.weights={ckpt}", "model.num_classes=4"])
        if not cfg.model.backbone.name.startswith("resnet"):
            continue
        cfg.model.backbone.name = "resnet18"  # the tiny run trained a full-width ResNet-18; the rest stands
        cfg.model.backbone.width = 64
        model = build_model(cfg)
        assert model.weights_meta["mean"] == read_weights(ckpt)[1]["mean"], path.name
        built += 1
    assert built >= 1


def test_eval_only_with_the_multi_scale_test(trained, capsys):
    """--eval-only: the config's test protocol on a checkpoint; test.multi_scale adds the fully-convolutional
    multi-scale errors, which are the top-1 of the softmax averaged over the whole image at each scale."""
    from detres.data.imagenet import ImageNetFolder, MultiScaleViews
    from detres.tasks.classification import build_model, cls_mean_std

    data, out, tool = trained
    ckpt = out / "model_final.pth"
    args = [str(ROOT / "configs" / "imagenet_r50.yaml"), *tiny_overrides(data, out), "test.multi_scale=[36,60]",
            "--eval-only", str(ckpt), "--device", "cpu"]
    assert tool.main(args) == 0
    ev = json.loads(capsys.readouterr().out)
    assert {"top1_error_center", "top1_error_10crop", "top1_error_multiscale", "top5_error_multiscale"} <= set(ev)
    cfg = load_config(out / "config.yaml", ["test.multi_scale=[36,60]"])
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    mean, std = cls_mean_std(cfg)
    ms = ImageNetFolder(data / "val", classes=list(CLASSES), transform=MultiScaleViews([36, 60], mean=mean, std=std))
    wrong = 0
    with torch.no_grad():
        for i in range(len(ms)):
            views, label = ms.get(i)
            assert min(views[1].shape[1:]) == 60
            p = sum(model(v[None]).softmax(dim=1)[0] for v in views) / 2
            wrong += int(p.argmax()) != label
    assert ev["top1_error_multiscale"] == pytest.approx(wrong / len(ms))
    assert tool.main([*args[:-4], "test.multi_scale=[0]", "--eval-only", str(ckpt)]) == 2
    assert "test.multi_scale" in capsys.readouterr().err


def test_per_pixel_mean_image(tmp_path, capsys):
    """data.mean_image: the training set's per-pixel mean image (centre views) is subtracted from every view,
    stored in the checkpoints beside the meta (whose mean becomes its per-channel mean) and used by --eval-only."""
    from detres.data.imagenet import ImageNetFolder
    from detres.data.transforms import build_cls_test_transform
    from detres.tasks.classification import build_datasets, compute_mean_image

    data = make_imagenet(tmp_path / "imagenet")
    out = tmp_path / "run"
    over = [*tiny_overrides(data, out, max_iter=2), "data.mean_image=true", "test.ten_crop=false"]
    cfg = load_config(ROOT / "configs" / "imagenet_r50.yaml", over)
    centre = build_cls_test_transform(resize=36, crop=32, ten_crop=False, mean=[0.0] * 3, std=[1.0] * 3)
    plain = ImageNetFolder(data / "train", transform=centre)
    by_hand = torch.stack([plain.get(i)[0][0].double() for i in range(len(plain))]).mean(dim=0).float()
    image = compute_mean_image(cfg)
    assert image.shape == (3, 32, 32)
    torch.testing.assert_close(image, by_hand)
    # a per-pixel image, not a flat one: the per-channel mean (the old behaviour) is a different subtraction
    assert float((image - image.mean(dim=(1, 2), keepdim=True)).abs().max()) > 0.01
    part = load_config(ROOT / "configs" / "imagenet_r50.yaml", [*over, "data.mean_image_samples=5"])
    assert not torch.allclose(compute_mean_image(part), image)
    _, val = build_datasets(cfg, train=False, mean_image=image)
    raw = ImageNetFolder(data / "val", classes=list(CLASSES), transform=centre)
    torch.testing.assert_close(val.get(0)[0], raw.get(0)[0] - image)
    tool = _tool("train_cls")
    assert tool.main([str(ROOT / "configs" / "imagenet_r50.yaml"), *over, "--no-progress"]) == 0
    capsys.readouterr()
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    torch.testing.assert_close(ckpt["mean_image"], image)
    state, meta = read_weights(out / "model_final.pth")
    assert meta["mean"] == pytest.approx(image.double().mean(dim=(1, 2)).tolist())
    assert meta["mean_image"]["shape"] == [3, 32, 32]
    assert tool.main([str(ROOT / "configs" / "imagenet_r50.yaml"), *over, "--eval-only",
                      str(out / "model_final.pth")]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 2 * len(CLASSES)
    build_c4("resnet18", weights=out / "model_final.pth")  # still a detection backbone
    # a checkpoint without a mean image is refused when the config asks for one
    plain_ckpt = tmp_path / "plain.pth"
    torch.save({"model": state, "meta": cls_meta(cfg)}, plain_ckpt)
    assert tool.main([str(ROOT / "configs" / "imagenet_r50.yaml"), *over, "--eval-only", str(plain_ckpt)]) == 2
    assert "mean image" in capsys.readouterr().err
