"""Shared helpers for the tests: a tiny shapes config, the tiny detector's settings, a detection
comparison, and the DDP gradient worker.

Not a test module (leading underscore); imported by tests/test_*.py and run as a script by test_ddp.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

TINY = {
    "model": {
        "backbone": {"name": "resnet18", "norm": "bn", "freeze_at": 0},
        "pooler": {"resolution": 7},
        "rpn": {"anchor_sizes": [16, 32], "pre_nms_top_n_train": 200, "post_nms_top_n_train": 40,
                "pre_nms_top_n_test": 100, "post_nms_top_n_test": 20, "batch_size_per_image": 32},
        "roi": {"batch_size_per_image": 16, "detections_per_img": 10},
    },
    "data": {"dataset": "shapes", "train": ["trainval"], "test": "test", "min_size": 64, "max_size": 64,
             "num_workers": 0, "aspect_ratio_grouping": False,
             "shapes": {"num_train": 8, "num_test": 2, "image_size": 64}},
    "solver": {"max_iter": 4, "base_lr": 0.01, "ims_per_batch": 2, "reference_batch": 2, "steps": [3],
               "warmup_iters": 2, "checkpoint_period": 2, "log_period": 1, "clip_grad_norm": 10.0},
    "test": {"eval_period": 2, "ims_per_batch": 2, "num_vis_images": 1},
    "seed": 0,
}


#: Spec fields (per part) of a small, fast detector for 64-128 px images: few anchor sizes, proposals and
#: sampled anchors/RoIs (the one copy; tests add their own options beside it through :func:`make_spec`).
TINY_DETECTOR = {"rpn": dict(anchor_sizes=(16, 32, 64), pre_nms_top_n_train=200, post_nms_top_n_train=32,
                             pre_nms_top_n_test=100, post_nms_top_n_test=16, batch_size_per_image=32),
                 "roi": dict(batch_size_per_image=16)}


def make_spec(name: str = "resnet18", *, tiny: bool = False, **parts: dict):
    """A ``DetectorSpec`` with backbone ``name``: the defaults (the paper's), or :data:`TINY_DETECTOR` with
    ``tiny``, changed by ``parts`` = per-part field values, e.g. ``make_spec(rpn={"min_size": 16})``."""
    from detres.modeling import DetectorSpec

    merged: dict[str, dict] = {k: dict(v) for k, v in TINY_DETECTOR.items()} if tiny else {}
    merged.setdefault("backbone", {})["name"] = name
    for part, values in parts.items():
        merged.setdefault(part, {}).update(values)
    return DetectorSpec.from_dict(merged)


def same_detections(a: dict, b: dict, *, box_tol: float = 0.5, score_tol: float = 1e-3) -> bool:
    """True when the detections ``a`` and ``b`` (``{"boxes" [N, 4] xyxy px, "labels" [N], "scores" [N]}``) are
    the same: the same count, and one-to-one pairs with the same label, boxes within ``box_tol`` px and scores
    within ``score_tol`` (order-free: near-ties may swap places)."""
    if len(a["labels"]) != len(b["labels"]):
        return False
    used = set()
    for i in range(len(a["labels"])):
        ok = False
        for j in range(len(b["labels"])):
            if j in used or int(a["labels"][i]) != int(b["labels"][j]):
                continue
            if ((a["boxes"][i] - b["boxes"][j]).abs().max() <= box_tol
                    and abs(float(a["scores"][i]) - float(b["scores"][j])) <= score_tol):
                used.add(j)
                ok = True
                break
        if not ok:
            return False
    return True


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_tiny_config(tmp_path: Path, name: str = "tiny.yaml", *, data_root: Path | None = None,
                      output_dir: Path | None = None, **over) -> Path:
    """Write a tiny shapes config (64-px images, resnet18, few RoIs) and return its path."""
    cfg = _merge(TINY, over)
    cfg["data"]["root"] = str(data_root or tmp_path / "data")
    cfg["output_dir"] = str(output_dir or tmp_path / "out")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------------
# DDP equivalence worker (run as: python _engine_helpers.py RANK WORLD PORT OUT_FILE)
# ------------------------------------------------------------------------------------------------
class FirstKSampler:
    """Deterministic stand-in for torchvision's BalancedPositiveNegativeSampler: the first
    ``num_pos`` positives and first ``num_neg`` negatives by index (same rule per image in any batch).
    With enough negatives every image samples exactly ``batch_size_per_image`` elements, so the loss
    of a 2-image batch is exactly the mean of the two 1-image losses."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, matched_idxs):
        import torch
        pos_out, neg_out = [], []
        for m in matched_idxs:
            pos = torch.where(m >= 1)[0]
            neg = torch.where(m == 0)[0]
            n_pos = min(int(self.batch_size_per_image * self.positive_fraction), pos.numel())
            n_neg = self.batch_size_per_image - n_pos
            if neg.numel() < n_neg:
                raise RuntimeError(f"test setup: only {neg.numel()} negatives, need {n_neg}")
            pm = torch.zeros_like(m, dtype=torch.uint8)
            nm = torch.zeros_like(m, dtype=torch.uint8)
            pm[pos[:n_pos]] = 1
            nm[neg[:n_neg]] = 1
            pos_out.append(pm)
            neg_out.append(nm)
        return pos_out, neg_out


def ddp_model_and_batch(config_path: str):
    """(model, images, targets) for the DDP test: frozen BN, deterministic samplers, 2 fixed images."""
    import torch
    from detres.config import load_config
    from detres.tasks.detection import build_model, build_train_dataset
    cfg = load_config(config_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.rpn.fg_bg_sampler = FirstKSampler(cfg.model.rpn.batch_size_per_image, 0.5)
    model.roi_heads.fg_bg_sampler = FirstKSampler(cfg.model.roi.batch_size_per_image, 0.25)
    ds = build_train_dataset(cfg)
    items = [ds[0], ds[1]]
    images = [im for im, _ in items]
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in items]
    return model, images, targets


def _ddp_worker(rank: int, world: int, port: int, config_path: str, out_file: str) -> None:
    import torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from detres.tasks.detection import detection_loss
    from detres.utils import comm as du
    dev = du.init_distributed(device="cpu")
    assert du.get_world_size() == world and torch.distributed.get_backend() == "gloo"
    model, images, targets = ddp_model_and_batch(config_path)
    ddp = du.wrap_model(model, dev)
    model.train()
    losses = detection_loss(ddp, ([images[rank]], [targets[rank]]))  # one image per rank
    sum(losses.values()).backward()
    if du.is_main_process():
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "losses": {k: v.detach() for k, v in losses.items()}}, out_file)
    du.barrier()
    du.destroy_distributed()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    r, w, port, cfg_path, out = sys.argv[1:6]
    _ddp_worker(int(r), int(w), int(port), cfg_path, out)
