"""``detres.Predictor``: a trained detector as a Python function of one image.

    from detres import Predictor
    predictor = Predictor("output/demo_shapes")          # the run folder: config.yaml + model_final.pth
    out = predictor("photo.jpg")                           # or a PIL image, or an HWC uint8 RGB array
    out["boxes"], out["labels"], out["scores"], out["class_names"]

The image goes through the same test transform as the evaluation (one resize to the config's sizes) and
the fast inference path (``test.fast_inference``); boxes come back in the ORIGINAL image's pixels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detres.config import DetConfig, load_config
from detres.data.coco import find_coco_files
from detres.data.transforms import build_transforms, pil_to_rgb8, read_image_rgb
from detres.engine.checkpoint import load_checkpoint
from detres.evaluation.inference import predict_original
from detres.tasks.detection import class_names_for, inference_model, load_model_from_checkpoint
from detres.utils.io import data_root

__all__ = ["Predictor", "as_rgb_array"]


def as_rgb_array(image: Any) -> np.ndarray:
    """An image given as a path, a PIL image or an array, as HWC uint8 RGB (grayscale is repeated)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image_rgb(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return pil_to_rgb8(image)  # 16-bit and float modes scaled, not clipped
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array: expected dtype uint8 (RGB 0-255), got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array: expected HxWx3 RGB, got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise ValueError(f"image: expected a path, a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")


class Predictor:
    """Detect objects in one image with a trained detres detector.

    Args:
        config_or_run_dir: a run folder (its ``config.yaml``, and ``model_final.pth`` unless
            ``checkpoint`` is given) or a config file.
        checkpoint: the weights (a trainer checkpoint); with a config file and no checkpoint, the config's
            ``output_dir/model_final.pth``.
        device: "cpu" or "cuda".

    ``predictor(image)`` returns ``{"boxes": float32 [N, 4] xyxy in the original image's pixels (0-based),
    "labels": int64 [N] in 1..K, "scores": float32 [N], "class_names": list of the N detections' names}``,
    highest score first, for detections above the config's ``model.roi.score_thresh`` (the model's test
    threshold, 0.05 in the paper configs: every detection a mAP computation needs).

    Attributes: ``class_names`` (label i + 1 is ``class_names[i]``), ``label_to_cat_id`` (label -> the
    data's category id, from checkpoints of COCO-JSON runs; None otherwise), ``score_thresh`` (the model's
    test threshold), ``vis_thresh`` (the config's ``test.vis_thresh``: what pictures draw).
    """

    def __init__(self, config_or_run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
                 device: str | torch.device = "cpu"):
        path = Path(config_or_run_dir)
        if path.is_dir():
            cfg_path, default_ckpt = path / "config.yaml", path / "model_final.pth"
        else:
            cfg_path, default_ckpt = path, None
        self.cfg: DetConfig = load_config(cfg_path, task="detection")  # a classification run: one line
        if default_ckpt is None:
            default_ckpt = Path(self.cfg.output_dir) / "model_final.pth"
        ckpt = Path(checkpoint) if checkpoint is not None else default_ckpt
        self.device = torch.device(device)
        state = load_checkpoint(str(ckpt))
        names = state.get("class_names") or class_names_for(self.cfg)
        if not names:
            raise ValueError(f"{ckpt}: holds no class names and the config's data set does not name them; "
                             "set data.classes in the config")
        self.class_names: tuple[str, ...] = tuple(names)
        ids = state.get("label_to_cat_id")
        self.label_to_cat_id: dict[int, int] | None = {int(k): int(v) for k, v in ids.items()} if ids else None
        self.score_thresh = float(self.cfg.model.roi.score_thresh)
        self.vis_thresh = float(self.cfg.test.vis_thresh)
        model = load_model_from_checkpoint(self.cfg, str(ckpt), device=self.device)
        self.model = inference_model(self.cfg, model, self.device)
        self.transform = build_transforms(train=False, min_size=self.cfg.data.min_size, max_size=self.cfg.data.max_size)

    def test_annotations(self) -> tuple[Path, Path] | None:
        """(annotation file, image folder) of the run's COCO test set, or None (not COCO data, or not found)."""
        d = self.cfg.data
        if d.dataset != "coco" or not d.test:
            return None
        if str(d.test).endswith(".json"):
            ann = Path(d.test)
            return (ann, Path(d.image_root) if d.image_root else ann.parent) if ann.is_file() else None
        try:
            image_dir, ann = find_coco_files(data_root(d.root), d.test)
        except ValueError:
            return None
        return Path(ann), Path(image_dir)

    @torch.no_grad()
    def __call__(self, image: Any) -> dict[str, Any]:
        rgb = as_rgb_array(image)
        tensor, target = self.transform(rgb, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                              "image_id": 0})
        det = predict_original(self.model, [tensor], [target], device=self.device)[0]
        names = [self.class_names[int(k) - 1] if 1 <= int(k) <= len(self.class_names) else str(int(k))
                 for k in det["labels"]]
        return {"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"], "class_names": names}
