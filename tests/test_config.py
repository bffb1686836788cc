"""Config system: defaults, YAML + _base_, key=value overrides (lists too), errors, round trip."""

import pytest

from detres.config import (CONFIG_SCHEMAS, ClsConfig, DetConfig, apply_overrides, list_config_keys, load_config,
                           save_config)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_every_config_field_has_a_default_and_a_comment():
    """The schema is the one place of every default, each with a one-line comment (the house rule): a field
    added without either fails here, naming it."""
    import ast
    import inspect

    import detres.config as config_module

    source = inspect.getsource(config_module).splitlines()
    missing, checked = [], 0
    for node in ast.walk(ast.parse("\n".join(source))):
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "dataclass" for d in node.decorator_list):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    line = source[item.lineno - 1]
                    checked += 1
                    if item.value is None or "#" not in line:
                        missing.append(f"{node.name}.{item.target.id}")
    assert missing == [] and checked > 100  # every field of both schemas was looked at
    keys = set(list_config_keys(DetConfig))
    assert {"solver.max_iter", "model.rpn.anchor_style", "test.fast.commute_head", "data.min_size"} <= keys
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


# --------------------------------------------------------------------------------------------------
# every default once (issue 18 item 3)
# --------------------------------------------------------------------------------------------------
def test_fast_path_options_are_the_test_fast_section():
    import dataclasses
    import inspect

    from detres.config import FastConfig
    from detres.modeling.fast import FAST_DEFAULTS, prepare_for_inference

    assert FAST_DEFAULTS == dataclasses.asdict(FastConfig()) == {
        "fold_bn": True, "channels_last": True, "freeze": False, "roi_chunk": None, "bf16": False,
        "pool_threads": 2, "commute_head": True, "winograd": True}
    assert {f"test.fast.{k}" for k in FAST_DEFAULTS} <= set(list_config_keys(DetConfig))
    # each option of the fast path is a config key: none can be set only from Python
    options = set(inspect.signature(prepare_for_inference).parameters) - {"model", "device", "enabled"}
    assert options == set(FAST_DEFAULTS)


def test_fast_options_reach_the_model_evaluation_runs(tmp_path):
    from _engine_helpers import write_tiny_config
    from detres.tasks.detection import build_model, inference_model

    path = write_tiny_config(tmp_path)
    cfg = load_config(path, ["test.fast.winograd=false", "test.fast.pool_threads=1", "test.fast.roi_chunk=5"])
    model = build_model(cfg, weights=None)
    fast = inference_model(cfg, model, "cpu")
    assert fast is not model and fast.inference_options == {
        "fold_bn": True, "channels_last": True, "freeze": False, "roi_chunk": 5, "bf16": False, "pool_threads": 1,
        "commute_head": True, "winograd": False}
    eager = load_config(path, ["test.fast_inference=false"])
    assert inference_model(eager, model, "cpu") is model
    with pytest.raises(ValueError, match=r"test.fast.roi_chunk"):
        load_config(path, ["test.fast.roi_chunk=0"])
    with pytest.raises(ValueError, match=r"test.fast.pool_threads"):
        load_config(path, ["test.fast.pool_threads=0"])


@pytest.mark.parametrize("func, params", [
    ("detres.engine.solver.build_sgd", ["momentum", "weight_decay", "bias_lr_factor", "weight_decay_bias"]),
    ("detres.engine.solver.WarmupMultiStep", ["gamma", "warmup_iters", "warmup_factor", "warmup_method"]),
    ("detres.engine.solver.build_warmup_multistep", ["gamma", "warmup_iters", "warmup_factor", "warmup_method"]),
    ("detres.evaluation.visualize.draw_detections", ["score_thresh"]),
    ("detres.evaluation.visualize.visualize_dataset", ["score_thresh", "num_images"]),
])
def test_no_second_default_below_the_config(func, params):
    """Values the config sets (solver.*, test.vis_thresh, test.num_vis_images) have no default of their own in
    the engine and evaluation: a caller passes the config's."""
    import importlib
    import inspect

    module, name = func.rsplit(".", 1)
    sig = inspect.signature(getattr(importlib.import_module(module), name))
    assert {p: sig.parameters[p].default for p in params} == {p: inspect.Parameter.empty for p in params}
