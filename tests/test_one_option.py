"""One detector option = one field in a config section (default, one-line comment, rule) + one use (issue 25
item 2), and no caller tests a backbone's name (item 3): the sites are counted here, not trusted."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import detres.config as config_module
from detres.config import BackboneConfig, DetConfig, PoolerConfig, RoIConfig, RPNConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"backbone": BackboneConfig, "pooler": PoolerConfig, "rpn": RPNConfig, "roi": RoIConfig}

#: The one line an RoI-head option needs in detres/config.py (its default, rule and comment) ...
OPTION_LINE = '    dummy_gain: float = _opt(0.5, lo=0, hi=1, why="a throwaway gain")  # a throwaway RoI option (test)\n'

#: ... and, run in a fresh interpreter with that config, the rest of the option's life: its one use in
#: build_detector (here: the RoI heads keep it), YAML loading, the spec's default and check, the build.
SCRIPT = r'''
import sys, types
import detres.utils.io  # the package and the layer below the config, before the edited config
path, yaml_path = sys.argv[1], sys.argv[2]
config = types.ModuleType("detres.config")
config.__file__ = path
sys.modules["detres.config"] = config
exec(compile(sys.stdin.read(), path, "exec"), config.__dict__)
import detres.modeling.detector as det

built = det._build_roi_heads
def _build_roi_heads(r, *args, **kwargs):  # the option's one use
    heads = built(r, *args, **kwargs)
    heads.dummy_gain = r.dummy_gain
    return heads
det._build_roi_heads = _build_roi_heads

from detres.modeling import RoISpec, build_detector
from detres.tasks.detection import detector_spec
cfg = config.load_config(yaml_path)
assert config.DetConfig().model.roi.dummy_gain == 0.5 and RoISpec().dummy_gain == 0.5, "default"
assert cfg.model.roi.dummy_gain == 0.25, "yaml"
spec = detector_spec(cfg)
assert spec.roi.dummy_gain == 0.25, "spec"
assert build_detector(spec, 3).roi_heads.dummy_gain == 0.25, "build"
for refuse in (lambda: config.load_config(yaml_path, ["model.roi.dummy_gain=2"]), lambda: RoISpec(dummy_gain=2.0),
               lambda: RoISpec(dummy_gain="x")):
    try:
        refuse()
    except ValueError as e:
        print("refused:", e)
    else:
        raise AssertionError("a value outside the rule passed")
print("OK")
'''


def test_a_new_option_is_one_config_line_and_one_use(tmp_path):
    source = Path(config_module.__file__).read_text()
    assert source.count("class RoIConfig:\n") == 1
    edited = source.replace("class RoIConfig:\n", "class RoIConfig:\n" + OPTION_LINE)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("model:\n  backbone: {name: resnet18, width: 8}\n  roi: {dummy_gain: 0.25}\n")
    # negative control: without the line, the key is unknown to YAML loading and the spec
    with pytest.raises(ValueError, match="unknown config key 'model.roi.dummy_gain'"):
        load_config(yaml_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", SCRIPT, config_module.__file__, str(yaml_path)], input=edited,
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stdout + run.stderr
    refusals = [line for line in run.stdout.splitlines() if line.startswith("refused:")]
    assert refusals == [
        "refused: config key 'model.roi.dummy_gain': must be in [0, 1], got 2.0 (a throwaway gain)",
        "refused: roi.dummy_gain: must be in [0, 1], got 2.0 (a throwaway gain)",
        "refused: roi.dummy_gain: expected float, got 'x'"]


def _bad_values(section: type, name: str) -> list:
    """Values just outside (and just inside) a field's rule, from the rule itself."""
    rule = next(f.metadata["rule"] for f in dataclasses.fields(section) if f.name == name)
    if rule["choices"]:
        return ["no-such-choice", *rule["choices"]]
    if rule["sizes"]:
        return [[], [0], [-1.5, 2], [8]]
    hi = getattr(section(), rule["hi"]) if isinstance(rule["hi"], str) else rule["hi"]
    values = [v for b in (rule["lo"], hi) if b is not None for v in (b - 1, b, b + 1)]
    return [float(v) if isinstance(getattr(section(), name), float) else v for v in values]


@pytest.mark.parametrize("part", list(SECTIONS))
def test_the_spec_refuses_exactly_what_yaml_refuses(part):
    """Every ruled field of a model section, at and around its bounds: the config (an override, as from a
    command line) and the spec built in Python accept and refuse the same values (issue 25: pooler.resolution
    was 1..64 in the config and 1..inf in the spec, backbone.width <= 512 in the config only)."""
    from detres.modeling import spec as spec_module

    part_spec = {"backbone": spec_module.BackboneSpec, "pooler": spec_module.PoolerSpec,
                 "rpn": spec_module.RPNSpec, "roi": spec_module.RoISpec}[part]
    section, checked = SECTIONS[part], 0
    assert [f.name for f in dataclasses.fields(part_spec)] == [f.name for f in dataclasses.fields(section)]
    for f in dataclasses.fields(section):
        if "rule" not in f.metadata:
            continue
        outcomes = []
        for value in _bad_values(section, f.name):
            cfg = DetConfig()
            setattr(getattr(cfg.model, part), f.name, value)
            yaml_ok = _accepts(lambda: config_module.validate_config(cfg))
            spec_ok = _accepts(lambda: part_spec(**{f.name: value}))
            assert yaml_ok == spec_ok, (part, f.name, value, yaml_ok, spec_ok)
            outcomes.append(yaml_ok)
        assert True in outcomes and False in outcomes, (f.name, outcomes)  # the bounds were reached
        checked += 1
    assert checked >= {"backbone": 2, "pooler": 3, "rpn": 12, "roi": 9}[part]


def _accepts(make) -> bool:
    try:
        make()
    except ValueError:
        return False
    return True


def test_model_rules_and_defaults_live_on_the_config_fields_only():
    """No second copy: no model.* range in the config's _RULES table, and the RPN, RoI heads and pooler take
    their options as required keywords (a default there would be a second default, a check a third)."""
    from detres.modeling.rcnn import PaperRPN
    from detres.modeling.roi_head import C4RoIHead, C4RoIPooler

    assert not [k for k in config_module._RULES if k.split(".")[:2] in (["model", s] for s in SECTIONS)]
    assert "model.width" not in config_module._RULES  # the classifier's width: its field's rule
    for cls, options in [(PaperRPN, {"allowed_border", "min_size_original", "proposal_order", "smooth_l1_beta"}),
                         (C4RoIHead, {"fg_iou_thresh", "bg_iou_thresh_hi", "bg_iou_thresh_lo", "batch_size_per_image",
                                      "positive_fraction", "smooth_l1_beta", "score_thresh", "nms_thresh",
                                      "detections_per_img"}),
                         (C4RoIPooler, {"kind", "feature", "stride", "output_size", "sampling_ratio", "aligned"})]:
        params = inspect.signature(cls.__init__).parameters
        keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert options <= keywords, (cls.__name__, options - keywords)
        with_default = {n for n in keywords if params[n].default is not inspect.Parameter.empty}
        assert with_default == set(), (cls.__name__, with_default)


# --------------------------------------------------------------------------------------------------
# no caller tests a backbone's name (issue 25 item 3)
# --------------------------------------------------------------------------------------------------
#: Modules allowed to compare backbone names, and why: the paper's tables are keyed by the networks the
#: paper names (VGG-16 vs ResNet-101), not by what a network is built of; the Fig. 6/7 plots group runs by
#: their LABEL (a run folder's name or the registry's label, "plain20"), given by the caller.
NAME_TABLES = {"detres/evaluation/compare.py", "detres/tasks/paper_runs.py", "detres/evaluation/degradation.py"}


def _name_like(value, names: list[str]) -> bool:
    return isinstance(value, str) and len(value) >= 3 and any(n.startswith(value) or value in n for n in names)


def _name_tests(source: str, names: list[str]) -> list[int]:
    """Lines comparing a string with a backbone name or a prefix of one: ``name == "vgg16"``, ``"plain" in
    name``, ``name in ("vgg16", ...)``, ``name.startswith("cifar_")``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            consts = [c.value for s in sides for c in ([s] if isinstance(s, ast.Constant) else
                                                          getattr(s, "elts", [])) if isinstance(c, ast.Constant)]
            if any(_name_like(v, names) for v in consts):
                lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith", "removeprefix", "removesuffix")
              and any(isinstance(a, ast.Constant) and _name_like(a.value, names) for a in node.args)):
            lines.append(node.lineno)
    return lines


def test_no_caller_tests_a_backbone_name():
    from detres.backbones import list_classifiers

    names = list_classifiers()
    # the scanner finds the forms that were there (negative controls)
    for bad in ('if name == "vgg16": pass', 'ok = "plain" in n', 'x = name.startswith("cifar_")',
                'y = bb in ("vgg16", "resnet101")', 'z = s.removeprefix("cifar_")'):
        assert _name_tests(bad, names) == [1], bad
    assert _name_tests('if info.fc_head and name == other: pass', names) == []
    found = {}
    for path in sorted([*(ROOT / "detres").rglob("*.py"), *(ROOT / "tools").glob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("detres/backbones/") or rel in NAME_TABLES:
            continue  # the registry's own package (it defines the names; weight converters read them from files)
        lines = _name_tests(path.read_text(), names)
        if lines:
            found[rel] = lines
    assert found == {}, f"ask detres.backbones.backbone_info(name) instead of testing the name: {found}"
