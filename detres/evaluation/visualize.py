"""Draw detections (boxes, class names, scores) on images with torchvision.utils.draw_bounding_boxes."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torchvision.utils import draw_bounding_boxes

from detres.evaluation.inference import predict_original

__all__ = ["draw_detections", "save_png", "to_uint8", "visualize_dataset"]

_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
            "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075", "#ffd8b1", "#808080"]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """CHW image, float in [0, 1] or uint8 -> uint8 CHW (RGB)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.cpu()
    return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None,
                    class_names: Sequence[str], *, score_thresh: float = 0.5, width: int = 2) -> torch.Tensor:
    """Draw xyxy ``boxes`` [N, 4] (image pixels) with "name score" captions; returns uint8 [3, H, W].

    ``labels`` [N] are 1..K (0 = background) and index ``class_names`` (K names, background excluded).
    Detections scoring below ``score_thresh`` are not drawn.
    """
    img = to_uint8(image)
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    labels = labels.detach().cpu().reshape(-1)
    if scores is not None:
        scores = scores.detach().float().cpu().reshape(-1)
        keep = scores >= score_thresh
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    if boxes.numel() == 0:
        return img
    h, w = img.shape[1:]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    captions, colors = [], []
    for i, lab in enumerate(labels.tolist()):
        name = class_names[lab - 1] if 1 <= lab <= len(class_names) else str(lab)
        captions.append(f"{name} {scores[i]:.2f}" if scores is not None else name)
        colors.append(_PALETTE[lab % len(_PALETTE)])
    return draw_bounding_boxes(img, boxes, labels=captions, colors=colors, width=width)


def save_png(image: torch.Tensor, path: str | os.PathLike) -> str:
    """Write a uint8 (or [0,1] float) CHW image as PNG; creates the folder."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from PIL import Image  # torchvision.io's PNG encoder is deprecated since 0.29
    Image.fromarray(to_uint8(image).permute(1, 2, 0).contiguous().numpy()).save(path, format="PNG")
    return path


@torch.no_grad()
def visualize_dataset(model: torch.nn.Module, dataset, out_dir: str | os.PathLike, *, class_names: Sequence[str],
                      num_images: int = 4, device: str | torch.device = "cpu", score_thresh: float = 0.5) -> list[str]:
    """Draw ``model``'s detections on the first ``num_images`` ORIGINAL images of ``dataset`` and save
    ``out_dir/<image_id>.png``; returns the paths.

    ``dataset[i]`` gives the transformed input and ``dataset.load(i)`` the original image (see
    :class:`detres.data.dataset.DetectionDataset`); the boxes come from
    :func:`~detres.evaluation.inference.predict_original`, so the pictures use the same pixels as the
    evaluation and ``tools/predict.py``.
    """
    was_training = model.training
    model.eval()
    paths = []
    try:
        for i in range(min(num_images, len(dataset))):
            image, target = dataset[i]
            original, _ = dataset.load(i)
            det = predict_original(model, [image], [target], device=device)[0]
            canvas = torch.from_numpy(original).permute(2, 0, 1).contiguous()
            drawn = draw_detections(canvas, det["boxes"], det["labels"], det["scores"], class_names,
                                    score_thresh=score_thresh)
            name = str(target.get("image_id", i))
            paths.append(save_png(drawn, os.path.join(os.fspath(out_dir), f"{name}.png")))
    finally:
        model.train(was_training)
    return paths
