"""Config system: defaults, YAML + _base_, key=value overrides (lists too), errors, round trip."""

import pytest

from detres.config import (CONFIG_SCHEMAS, ClsConfig, DetConfig, apply_overrides, list_config_keys, load_config,
                           save_config)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_required_keys_exist():
    keys = set(list_config_keys(DetConfig))
    for k in ["solver.max_iter", "solver.base_lr", "solver.ims_per_batch", "solver.steps", "solver.warmup_iters",
              "solver.checkpoint_period", "test.eval_period", "model.backbone.name", "model.backbone.weights",
              "data.root", "output_dir", "seed", "solver.reference_batch"]:
        assert k in keys, k
    assert CONFIG_SCHEMAS["detection"] is DetConfig and CONFIG_SCHEMAS["classification"] is ClsConfig


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "_base_").mkdir()
    _write(tmp_path / "_base_" / "b.yaml", "solver:\n  base_lr: 0.01\n  max_iter: 100\nmodel:\n  backbone:\n    name: resnet18\n")
    cfg_path = _write(tmp_path / "c.yaml", "_base_: _base_/b.yaml\nsolver:\n  max_iter: 200\n")
    cfg = load_config(cfg_path, ["solver.steps=[60,80]", "model.backbone.weights=/x/w.pth", "seed=3"])
    assert cfg.solver.base_lr == 0.01  # from base
    assert cfg.solver.max_iter == 200  # file overrides base
    assert cfg.model.backbone.name == "resnet18"
    assert cfg.solver.steps == [60, 80]
    assert cfg.model.backbone.weights == "/x/w.pth"
    assert cfg.seed == 3
    assert cfg.solver.momentum == DetConfig().solver.momentum  # untouched default
    # int accepted for float, None for Optional
    apply_overrides(cfg, ["solver.base_lr=1", "model.backbone.weights=None", "model.rpn.anchor_sizes=[16,32]"])
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.model.backbone.weights is None
    assert cfg.model.rpn.anchor_sizes == [16, 32]


def test_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path / "c.yaml", "solver:\n  steps: [3, 5]\n"), ["model.pooler.resolution=7"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg
    assert type(again) is DetConfig


def test_task_picks_classification_schema(tmp_path):
    cfg = load_config(_write(tmp_path / "c.yaml", "task: classification\nmodel:\n  name: resnet18\n"))
    assert isinstance(cfg, ClsConfig) and cfg.model.name == "resnet18" and cfg.test.ten_crop is True
    save_config(cfg, tmp_path / "r.yaml")
    assert load_config(tmp_path / "r.yaml") == cfg


def test_unknown_key_suggests_closest(tmp_path):
    p = _write(tmp_path / "c.yaml", "solver:\n  base_lrr: 0.1\n")
    with pytest.raises(ValueError) as e:
        load_config(p)
    msg = str(e.value)
    assert "solver.base_lrr" in msg and "solver.base_lr" in msg and "c.yaml" in msg
    with pytest.raises(ValueError, match="did you mean 'solver.max_iter'"):
        load_config(_write(tmp_path / "d.yaml", ""), ["solver.max_iters=5"])
    with pytest.raises(ValueError, match="did you mean 'model.backbone.name'"):
        load_config(_write(tmp_path / "e.yaml", "model:\n  backbone:\n    nam: resnet18\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ValueError, match="solver.max_iter.*expected int"):
        load_config(_write(tmp_path / "c.yaml", "solver:\n  max_iter: lots\n"))
    with pytest.raises(ValueError, match="solver.steps"):
        load_config(_write(tmp_path / "d.yaml", ""), ["solver.steps=5"])
    with pytest.raises(ValueError, match=r"solver.steps\[1\]"):
        load_config(_write(tmp_path / "e.yaml", ""), ["solver.steps=[1,x]"])
    with pytest.raises(ValueError, match="data.flip_prob"):
        load_config(_write(tmp_path / "f.yaml", "data:\n  flip_prob: [1]\n"))
    with pytest.raises(ValueError, match="section"):
        load_config(_write(tmp_path / "g.yaml", "solver: 3\n"))
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(_write(tmp_path / "h.yaml", ""), ["solver.max_iter"])


def test_base_is_one_level_and_missing_file(tmp_path):
    _write(tmp_path / "a.yaml", "seed: 1\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\nseed: 2\n")
    with pytest.raises(ValueError, match="one level"):
        load_config(_write(tmp_path / "c.yaml", "_base_: b.yaml\n"))
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "nope.yaml")
