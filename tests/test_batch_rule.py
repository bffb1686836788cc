"""solver.batch_rule: the paper's update (reference_batch images, the paper's rate and iterations) on any number of
processes through gradient accumulation, and the linear scaling rule as the explicit alternative."""
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from detres.config import ClsSolverConfig, SolverConfig, load_config
from detres.tasks import common
from detres.tasks.common import BatchPlan, build_solver, check_accumulation, resolve_batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("world, iter_size", [(1, 16), (2, 8), (8, 2), (16, 1)])
def test_coco_keeps_the_paper_update_on_any_number_of_processes(world, iter_size):
    """coco_r101: 16 images per update (ResNet App. A: 8 GPUs x 1 x 2); lr 0.001 and 320k iterations unchanged."""
    cfg = load_config(CONFIGS / "coco_r101.yaml")
    plan = resolve_batch(cfg, world_size=world)
    assert (plan.iter_size, plan.total, plan.lr, plan.processes, plan.ims_per_batch) == \
        (iter_size, 16, 0.001, world, 1)
    assert cfg.solver.max_iter == 320000


def test_linear_scaling_is_the_explicit_alternative():
    """Negative control: the old rule on 1 process keeps iter_size 2 and divides the rate by 8."""
    cfg = load_config(CONFIGS / "coco_r101.yaml", ["solver.batch_rule=linear_scaling"])
    plan = resolve_batch(cfg, world_size=1)
    assert (plan.iter_size, plan.total) == (2, 2)
    assert plan.lr == pytest.approx(0.001 * 2 / 16, rel=1e-12)


@pytest.mark.parametrize("world, iter_size, total, lr", [
    (1, 2, 2, 0.001),   # pfr: 1 GPU x 1 image x iter_size 2 (solver.prototxt:16)
    (2, 1, 2, 0.001),
    (8, 1, 8, 0.004),   # more images per pass than the reference: no accumulation, the rest scaled linearly
])
def test_voc_accumulation(world, iter_size, total, lr):
    cfg = load_config(CONFIGS / "voc07_r101.yaml")
    plan = resolve_batch(cfg, world_size=world)
    assert (plan.iter_size, plan.total) == (iter_size, total)
    assert plan.lr == pytest.approx(lr, rel=1e-12)


def test_remainder_rounds_the_accumulation_up_and_scales_the_rest():
    cfg = load_config(CONFIGS / "coco_r101.yaml")
    plan = resolve_batch(cfg, world_size=3)  # 16 / 3: 6 passes of 3 images = 18
    assert (plan.iter_size, plan.total) == (6, 18)
    assert plan.lr == pytest.approx(0.001 * 18 / 16, rel=1e-12)


def test_defaults_elsewhere_are_linear_scaling():
    assert SolverConfig().batch_rule == ClsSolverConfig().batch_rule == "linear_scaling"
    for name in ("imagenet_r50", "cifar10_resnet110", "demo_shapes"):
        assert load_config(CONFIGS / f"{name}.yaml").solver.batch_rule == "linear_scaling", name


def test_unknown_batch_rule_names_the_key():
    cfg = load_config(CONFIGS / "coco_r101.yaml", ["solver.batch_rule=accumulated"])
    with pytest.raises(ValueError, match="solver.batch_rule"):
        resolve_batch(cfg, world_size=1)


def test_log_says_the_paper_update(caplog):
    cfg = load_config(CONFIGS / "coco_r101.yaml")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    with caplog.at_level(logging.INFO, logger="detres"):
        opt, _ = build_solver(cfg, model)  # one process here
    assert "paper update: 16 images = 1 processes x 1 x accumulation 16" in caplog.text
    assert "linear scaling rule" not in caplog.text
    assert opt.param_groups[0]["lr"] == 0.001


def _plan(k):
    return BatchPlan(rule="accumulate", processes=1, ims_per_batch=1, iter_size=k, total=k, reference=k, lr=0.1)


def test_trainable_bn_is_warned_syncbn_refused_frozen_exact(caplog):
    from torchvision.ops import FrozenBatchNorm2d

    with caplog.at_level(logging.WARNING, logger="detres"):
        check_accumulation(nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4)), _plan(16))
        assert caplog.text == ""
        check_accumulation(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), _plan(1))  # nothing accumulated
        assert caplog.text == ""
        check_accumulation(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), _plan(16))
        assert "trainable BatchNorm" in caplog.text and "updated 16 times per update" in caplog.text
    with pytest.raises(ValueError, match="SyncBatchNorm.*solver.batch_rule=linear_scaling"):
        check_accumulation(nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)), _plan(16))


def test_run_training_accumulates_the_resolved_passes(tmp_path, monkeypatch):
    """The Trainer receives resolve_batch's iter_size (4 = reference 8 / 2 images), not solver.iter_size (1)."""
    from _engine_helpers import write_tiny_config

    cfg = load_config(write_tiny_config(tmp_path), ["solver.batch_rule=accumulate", "solver.reference_batch=8",
                                                    "model.backbone.norm=frozen_bn"])
    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(common, "Trainer", fake_trainer)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(Stop):
        common.run_training(cfg, model=model, loss_fn=None, loader_factory=None, eval_fn=None, meta={},
                            device=torch.device("cpu"))
    assert (seen["iter_size"], cfg.solver.iter_size) == (4, 1)
    assert seen["optimizer"].param_groups[0]["initial_lr"] == 0.01  # base_lr unscaled (before the warmup)


def test_build_solver_checks_the_normalisation():
    """build_solver runs the BN check: a SyncBatchNorm model under accumulation (1 process, 16 passes) is refused,
    and the same model under linear_scaling is built."""
    cfg = load_config(CONFIGS / "coco_r101.yaml")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4))
    with pytest.raises(ValueError, match="solver.batch_rule"):
        build_solver(cfg, model)
    cfg = load_config(CONFIGS / "coco_r101.yaml", ["solver.batch_rule=linear_scaling"])
    opt, _ = build_solver(cfg, model)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 / 8, rel=1e-12)
