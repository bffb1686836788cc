"""Pictures of detections: boxes, class names and scores drawn on the original image, readable at any size.

Small images (the demo's are 128x128) are enlarged so that at least their shorter side is ``min_side``
pixels before drawing; each label sits on a filled tag above its box (inside it only at the top border), in a
font sized to the picture, with one colour per class.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from detres.evaluation.inference import predict_original
from detres.utils.io import atomic_write

__all__ = ["draw_detections", "empty_caption", "save_png", "to_uint8", "visualize_dataset", "PALETTE"]

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
           "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075", "#ffd8b1", "#808080"]


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """CHW tensor (float in [0, 1] or uint8) or HWC uint8 array -> HWC uint8 RGB array."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
        return image
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.cpu().permute(1, 2, 0).contiguous().numpy()


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else str(label)


def empty_caption(labels: torch.Tensor, scores: torch.Tensor, class_names: Sequence[str],
                  score_thresh: float) -> str | None:
    """The caption of a picture on which no detection reaches ``score_thresh`` (None when one does):
    "no detection >= 0.5 (best: cup 0.412)", the best score truncated (never shown as reaching the
    threshold), or "(the model returned none)"."""
    labels, scores = torch.as_tensor(labels).reshape(-1), torch.as_tensor(scores).float().reshape(-1)
    if bool((scores >= score_thresh).any()):
        return None
    if not scores.numel():
        return f"no detection >= {score_thresh:g} (the model returned none)"
    best = math.floor(float(scores.max()) * 1000) / 1000
    return f"no detection >= {score_thresh:g} (best: {_name(class_names, int(labels[int(scores.argmax())]))} {best:.3f})"


def draw_detections(image: torch.Tensor | np.ndarray, boxes: torch.Tensor, labels: torch.Tensor,
                    scores: torch.Tensor | None, class_names: Sequence[str], *, score_thresh: float | None,
                    min_side: int = 480) -> np.ndarray:
    """Draw xyxy ``boxes`` [N, 4] (pixels of ``image``) with "name score" tags; returns HWC uint8 RGB.

    ``labels`` [N] are 1..K (0 = background) and index ``class_names`` (K names, background excluded).
    Detections scoring below ``score_thresh`` (the config's ``test.vis_thresh``, passed by the caller; None only
    with ``scores`` None) are not drawn; when that leaves none, a caption says so:
    "no detection >= t (best: <class> <score>)" (or "(the model returned none)"), so that an empty picture is
    never mistaken for a broken one. An image whose shorter side is below ``min_side`` is enlarged by an
    integer factor first (boxes scale with it).
    """
    img = to_uint8(image)
    h, w = img.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    canvas = Image.fromarray(img).resize((w * factor, h * factor), Image.NEAREST) if factor > 1 else Image.fromarray(img)
    boxes = torch.as_tensor(boxes).detach().float().cpu().reshape(-1, 4) * factor
    labels = torch.as_tensor(labels).detach().cpu().reshape(-1)
    caption = None
    if scores is not None:
        if score_thresh is None:
            raise ValueError("draw_detections: scores given without score_thresh (the config's test.vis_thresh)")
        scores = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
        keep = scores >= score_thresh
        caption = empty_caption(labels, scores, class_names, score_thresh)
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    draw = ImageDraw.Draw(canvas)
    side = min(canvas.size)
    font = ImageFont.load_default(size=max(12, side // 32))
    line = max(2, side // 200)
    if caption is not None:
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), caption, font=font)
        draw.rectangle((0, 0, tx1 - tx0 + 4 * line, ty1 - ty0 + 4 * line), fill="black")
        draw.text((2 * line - tx0, 2 * line - ty0), caption, fill="white", font=font)
    for i, lab in enumerate(labels.tolist()):
        x1, y1, x2, y2 = boxes[i].tolist()
        x1, x2 = max(0.0, x1), min(canvas.size[0] - 1.0, x2)
        y1, y2 = max(0.0, y1), min(canvas.size[1] - 1.0, y2)
        colour = PALETTE[lab % len(PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        name = _name(class_names, lab)
        text = f"{name} {scores[i]:.2f}" if scores is not None else name
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0 + 2 * line, ty1 - ty0 + 2 * line
        top = y1 - th if y1 - th >= 0 else y1  # above the box, unless the box touches the top border
        left = min(x1, canvas.size[0] - tw)
        draw.rectangle((left, top, left + tw, top + th), fill=colour)
        draw.text((left + line - tx0, top + line - ty0), text, fill="white", font=font)
    return np.asarray(canvas)


def save_png(image: torch.Tensor | np.ndarray, path: str | os.PathLike) -> str:
    """Write an image (HWC uint8 array, or CHW tensor) as PNG, atomically; creates the folder."""
    arr = to_uint8(image)
    return atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"), binary=True)


def _picture_name(dataset, index: int, target: dict) -> str:
    """The image's file name without its suffix, relative to the image folder (subfolders kept, so no two
    pictures collide) where the data set knows it (COCO), else its image id (VOC: the file's stem)."""
    image_id = target.get("image_id", index)
    name = None
    if callable(getattr(dataset, "file_name", None)):
        name = str(dataset.file_name(index))
    else:
        coco = getattr(dataset, "coco", None)
        if coco is not None and image_id in getattr(coco, "imgs", {}):
            name = str(coco.imgs[image_id]["file_name"])
    if name is None:
        return str(image_id)
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return os.path.splitext("/".join(parts))[0] or str(image_id)


@torch.no_grad()
def visualize_dataset(model: torch.nn.Module, dataset, out_dir: str | os.PathLike, *, class_names: Sequence[str],
                      num_images: int, device: str | torch.device = "cpu", score_thresh: float) -> list[str]:
    """Draw ``model``'s detections scoring at least ``score_thresh`` (``test.vis_thresh``) on the first
    ``num_images`` (``test.num_vis_images``) ORIGINAL images of ``dataset`` and save ``out_dir/<image file name>.png`` (COCO: the
    ``file_name`` without its suffix, subfolders kept; VOC: the image id, which is the stem); returns the paths.

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
            drawn = draw_detections(original, det["boxes"], det["labels"], det["scores"], class_names,
                                    score_thresh=score_thresh)
            name = _picture_name(dataset, i, target)
            paths.append(save_png(drawn, os.path.join(os.fspath(out_dir), f"{name}.png")))
    finally:
        model.train(was_training)
    return paths
