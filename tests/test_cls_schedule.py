"""The rate set from the training error (ImageNet's plateau drops, ResNet-110's warmup until 80%):
engine.hooks.ErrorDrivenLR on a trainer fed a scripted error, and its wiring from the config."""
from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

from detres.config import load_config
from detres.engine.hooks import ErrorDrivenLR
from detres.engine.solver import build_warmup_multistep
from detres.engine.trainer import HookBase, Trainer
from detres.tasks.classification import build_lr_hooks

ROOT = pathlib.Path(__file__).resolve().parents[1]
WARMUP = dict(window=2, warmup_until_error=0.8, warmup_factor=0.1, plateau=False, gamma=0.1, plateau_patience=0,
              plateau_threshold=0.0)
PLATEAU = dict(window=2, warmup_until_error=None, warmup_factor=1.0, plateau=True, gamma=0.1, plateau_patience=1,
               plateau_threshold=0.01)


class _Record(HookBase):
    def __init__(self):
        self.lrs = []

    def after_step(self):
        self.lrs.append(self.trainer.lr)


def _run(errors, hooks, *, warmup_iters=0, warmup_factor=0.1, steps=(), start=None):
    """Train a 1-parameter model for len(errors) iterations whose batch i reports train_error errors[i];
    returns the rate each iteration used."""
    model = nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_warmup_multistep(opt, steps=list(steps), gamma=0.1, warmup_iters=warmup_iters,
                                   warmup_factor=warmup_factor, warmup_method="constant")

    def loss_fn(m, i):
        return {"loss": (m.weight * 0).sum(), "train_error": torch.tensor(errors[i])}

    t = Trainer(model=model, loss_fn=loss_fn, optimizer=opt, scheduler=sched,
                loader_factory=lambda start: iter(range(start, len(errors))), max_iter=len(errors))
    rec = _Record()
    t.register_hooks([*hooks, rec])
    t.train()
    return rec.lrs, t


def test_warmup_lasts_until_the_error_is_below_the_threshold():
    errors = [0.95] * 6 + [0.7] * 10  # the windowed (2) error is below 0.8 after iteration 8 (indices 6, 7)
    hook = ErrorDrivenLR(**WARMUP)
    lrs, _ = _run(errors, [hook])
    assert lrs[:8] == pytest.approx([0.1] * 8) and lrs[8:] == pytest.approx([1.0] * 8)
    assert hook.warmup_ended_at == 8
    # negative control: the old fixed-length warmup (3 iterations here) ends by the count, error or not
    old, _ = _run(errors, [], warmup_iters=3)
    assert old[3:8] == pytest.approx([1.0] * 5)
    # an error that never falls below 80% keeps the warmup rate throughout
    lrs, _ = _run([0.95] * 10, [ErrorDrivenLR(**WARMUP)])
    assert lrs == pytest.approx([0.1] * 10)


def test_plateau_divides_the_rate_by_ten_when_the_error_stops_falling():
    errors = [0.9, 0.9, 0.5, 0.5] + [0.5] * 8 + [0.2] * 4
    hook = ErrorDrivenLR(**PLATEAU)
    lrs, _ = _run(errors, [hook])
    # windows end at 2 (0.9 best), 4 (0.5 best), 6 (bad 1), 8 (bad 2 > patience: drop), 10 (bad 1), 12 (drop),
    # 14 (0.2: best), 16
    assert hook.drops == [8, 12]
    assert lrs == pytest.approx([1.0] * 8 + [0.1] * 4 + [0.01] * 4)
    # negative control: the fixed-step schedule ignores the error (no steps: the rate never drops)
    old, _ = _run(errors, [])
    assert old == pytest.approx([1.0] * 16)
    # a relative improvement below the threshold counts as no improvement
    hook = ErrorDrivenLR(**dict(PLATEAU, plateau_patience=0, plateau_threshold=0.1))
    lrs, _ = _run([0.5, 0.5, 0.48, 0.48], [hook])
    assert hook.drops == [4]


def test_configs_ask_for_the_papers_rules():
    cfg = load_config(ROOT / "configs" / "cifar10_resnet110.yaml")
    assert cfg.solver.warmup_until_error == 0.8 and cfg.solver.warmup_iters == 0
    assert cfg.solver.warmup_factor * cfg.solver.base_lr == pytest.approx(0.01)
    (hook,) = build_lr_hooks(cfg)
    assert hook.warming and hook.plateau is None and hook.warmup_until_error == 0.8
    steps = load_config(ROOT / "configs" / "imagenet_r50.yaml", ["solver.lr_schedule=steps",
                                                                 "solver.steps=[150000,300000]"])
    assert build_lr_hooks(steps) == []  # fixed steps: no hook
    plateau = load_config(ROOT / "configs" / "imagenet_r50.yaml")  # the paper's rule (Sec. 3.4)
    (hook,) = build_lr_hooks(plateau)
    assert hook.plateau is not None and not hook.warming
    with pytest.raises(ValueError, match="solver.steps"):
        build_lr_hooks(load_config(ROOT / "configs" / "imagenet_r50.yaml", ["solver.steps=[150000]"]))
    with pytest.raises(ValueError, match="solver.lr_schedule"):
        build_lr_hooks(load_config(ROOT / "configs" / "imagenet_r50.yaml", ["solver.lr_schedule=cosine"]))
    with pytest.raises(ValueError, match="solver.warmup_until_error"):
        load_config(ROOT / "configs" / "cifar10_resnet110.yaml", ["solver.warmup_until_error=1.5"])


def test_resume_keeps_the_rate_the_hook_had_reached():
    errors = [0.95] * 6 + [0.7] * 10
    def resumed(stop, kwargs=WARMUP):
        hook = ErrorDrivenLR(**kwargs)
        _, first = _run(errors[:stop], [hook])
        state = first.state_dict()
        model = nn.Linear(1, 1, bias=False)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = build_warmup_multistep(opt, steps=[], gamma=0.1, warmup_iters=0, warmup_factor=0.1,
                                       warmup_method="constant")
        t = Trainer(model=model, loss_fn=lambda m, i: {"loss": (m.weight * 0).sum(),
                                                        "train_error": torch.tensor(errors[i])},
                    optimizer=opt, scheduler=sched, loader_factory=lambda start: iter(range(start, len(errors))),
                    max_iter=len(errors))
        t.load_state_dict(state)
        again, rec = ErrorDrivenLR(**kwargs), _Record()
        t.register_hooks([again, rec])
        t.train()
        return rec.lrs

    assert resumed(10) == pytest.approx([1.0] * 6)  # warmup had ended at 8: it does not start again
    assert resumed(4) == pytest.approx([0.1] * 4 + [1.0] * 8)  # still warming at 4: ends at 8 as without a stop
    # plateau: dropped once by iteration 10 (see above): the resumed run goes on at 0.1, counters afresh
    errors[:] = [0.9, 0.9, 0.5, 0.5] + [0.5] * 8 + [0.2] * 4
    assert resumed(10, PLATEAU) == pytest.approx([0.1] * 6)


def test_no_second_default_below_the_config():
    """The values solver.* and test.multi_scale_flip set have no default of their own below tasks/."""
    import inspect

    from detres.evaluation.classification import evaluate_multi_scale

    sig = inspect.signature(ErrorDrivenLR)
    assert all(p.default is inspect.Parameter.empty for p in sig.parameters.values())
    assert inspect.signature(evaluate_multi_scale).parameters["flip"].default is inspect.Parameter.empty


def test_resnet110_config_trains_with_the_error_condition(tmp_path):
    """tools/train_cls.py on the ResNet-110 config (a ResNet-20 on digits, 4 iterations): the rate stays at 0.01
    while the training error is above the threshold, whatever the iteration count."""
    import json

    from test_train_cls import _tool

    tool = _tool("train_cls")
    base = [str(ROOT / "configs" / "cifar10_resnet110.yaml"), "data.dataset=digits", "data.num_workers=0",
            "model.name=cifar_resnet20", "solver.max_iter=4", "solver.steps=[]", "solver.ims_per_batch=16",
            "solver.reference_batch=16", "solver.log_period=1", "solver.checkpoint_period=0", "test.eval_period=0",
            "solver.error_window=1"]

    def lrs(out, *over):
        assert tool.main([*base, f"output_dir={out}", *over, "--no-progress", "--device", "cpu"]) == 0
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["lr"] for r in rows if "lr" in r]

    # an untrained net errs on far more than 1% of a batch: the warmup never ends
    assert lrs(tmp_path / "a", "solver.warmup_until_error=0.01") == pytest.approx([0.01] * 4)
    # negative control: the old fixed-length warmup (2 iterations here) ends by the count
    assert lrs(tmp_path / "b", "solver.warmup_until_error=null", "solver.warmup_iters=2",
               "solver.warmup_method=constant") == pytest.approx([0.01, 0.01, 0.1, 0.1])
