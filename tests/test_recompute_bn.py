"""tools/recompute_bn.py (He et al. 2015, Appendix A): BN statistics measured again on N training images."""
from __future__ import annotations

import json

import pytest
import torch

from detres.backbones import read_weights
from detres.config import load_config
from detres.engine.checkpoint import save_checkpoint
from detres.tasks.classification import bn_sample, build_datasets, build_model, cls_meta
from test_train_cls import ROOT, _tool, make_imagenet, tiny_overrides


def test_recompute_bn_measures_the_training_images(tmp_path, capsys):
    data = make_imagenet(tmp_path / "imagenet")  # 4 training images per class, 3 classes
    overrides = tiny_overrides(data, tmp_path / "run")
    cfg = load_config(ROOT / "configs" / "imagenet_r50.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = tmp_path / "cls.pth"
    save_checkpoint({"model": model.state_dict(), "meta": cls_meta(cfg)}, str(weights), update_last=False)
    out = tmp_path / "cls_bn.pth"
    tool = _tool("recompute_bn")
    args = [str(ROOT / "configs" / "imagenet_r50.yaml"), *overrides, "--weights", str(weights), "--output", str(out),
            "--num-images", "12", "--batch-size", "12"]
    assert tool.main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] == 12
    new, meta = read_weights(out)
    old, _ = read_weights(weights)
    assert meta["bn_recomputed"]["num_images"] == 12 and meta["mean"] == cls_meta(cfg)["mean"]
    # by hand: conv1's output on the 12 sampled, augmented training images; BN's batch mean and unbiased variance
    train_set, _ = build_datasets(cfg, test=False)
    x = torch.stack([train_set.get(i, seed=s)[0] for i, s in bn_sample(cfg, 12, len(train_set))])
    with torch.no_grad():
        y = model.conv1(x)
    torch.testing.assert_close(new["bn1.running_mean"], y.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new["bn1.running_var"], y.transpose(0, 1).reshape(y.shape[1], -1).var(dim=1),
                               rtol=1e-4, atol=1e-5)
    # negative control: the input's statistics (a fresh net: zeros and ones) are not those
    assert not torch.allclose(old["bn1.running_mean"], new["bn1.running_mean"], atol=1e-3)
    assert not torch.allclose(old["layer4.1.bn2.running_var"], new["layer4.1.bn2.running_var"], atol=1e-3)
    for k in old:  # only the BN buffers change
        if "running" not in k and "num_batches_tracked" not in k:
            torch.testing.assert_close(new[k], old[k], msg=k)
    # the sample is the seeded permutation's head: another seed picks other images
    assert bn_sample(cfg, 5, 12) == bn_sample(cfg, 5, 12)
    assert [i for i, _ in bn_sample(cfg, 5, 12)] != [i for i, _ in bn_sample(load_config(
        ROOT / "configs" / "imagenet_r50.yaml", [*overrides, "seed=1"]), 5, 12)]
    # user mistakes end in one line, exit 2
    assert tool.main(args) == 2 and "exists" in capsys.readouterr().err
    bad = [*args[:-4], "--num-images", "13", "--overwrite"]
    assert tool.main(bad) == 2 and "--num-images" in capsys.readouterr().err
    same = [str(ROOT / "configs" / "imagenet_r50.yaml"), *overrides, "--weights", str(weights), "--output",
            str(weights), "--num-images", "4", "--overwrite"]
    assert tool.main(same) == 2 and "input weights" in capsys.readouterr().err


def test_recompute_bn_defaults_to_the_whole_training_set(tmp_path, capsys):
    """Appendix A recomputes the statistics on the training set: without --num-images every training image is
    measured once (12 here), the same statistics as a sample of all 12; --num-images 6 measures 6."""
    data = make_imagenet(tmp_path / "imagenet")  # 4 training images per class, 3 classes
    overrides = tiny_overrides(data, tmp_path / "run")
    cfg = load_config(ROOT / "configs" / "imagenet_r50.yaml", overrides)
    assert sorted(i for i, _ in bn_sample(cfg, None, 12)) == list(range(12))
    torch.manual_seed(0)
    weights = tmp_path / "cls.pth"
    save_checkpoint({"model": build_model(cfg).state_dict(), "meta": cls_meta(cfg)}, str(weights), update_last=False)
    tool = _tool("recompute_bn")
    base = [str(ROOT / "configs" / "imagenet_r50.yaml"), *overrides, "--weights", str(weights), "--batch-size", "12"]
    stats = {}
    for name, extra in (("all", []), ("sample12", ["--num-images", "12"]), ("sample6", ["--num-images", "6"])):
        assert tool.main([*base, "--output", str(tmp_path / f"{name}.pth"), *extra]) == 0
        stats[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"]
        assert read_weights(tmp_path / f"{name}.pth")[1]["bn_recomputed"]["num_images"] == stats[name]
    assert stats == {"all": 12, "sample12": 12, "sample6": 6}
    every, twelve, six = (read_weights(tmp_path / f"{n}.pth")[0] for n in ("all", "sample12", "sample6"))
    torch.testing.assert_close(every["bn1.running_mean"], twelve["bn1.running_mean"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(every["bn1.running_mean"], six["bn1.running_mean"], atol=1e-4)
