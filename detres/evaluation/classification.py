"""Top-1 / top-5 error of an ImageNet classifier: single centre crop and the paper's 10-crop testing.

He et al. (2015) Sec. 3.4: "In testing, for comparison studies we adopt the standard 10-crop testing"
(Krizhevsky et al. 2012): the 224 crops at the 4 corners and the centre of the image resized to 256 on
its shorter side, each with its horizontal flip; the softmax scores of the 10 views are averaged.

The fully-convolutional multi-scale test (Sec. 3.4, "for best results", Table 4): the whole image at each
shorter side of ``scales`` (the paper's {224, 256, 384, 480, 640}), the classifier's fc applied as a 1x1
convolution to the last feature map, the class scores averaged over the positions, softmax, and the
probabilities averaged over the scales (:func:`evaluate_multi_scale`; optionally over the mirrored images too,
which Sec. 3.4 does not mention).

The test loader gives ``views [N, V, 3, 224, 224]`` (see :func:`detres.data.imagenet.build_test_transform`).
With V = 10, the centre-crop figure uses view :data:`~detres.data.imagenet.CENTER_VIEW` alone and the
10-crop figure the average of all views, so one pass gives both. With V = 1 only the centre crop is reported.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from detres.data.imagenet import CENTER_VIEW
from detres.utils.amp import autocast
from detres.utils.comm import all_reduce_sum, is_distributed

__all__ = ["ten_crop", "ClassificationEvaluator", "evaluate_classifier", "topk_correct", "fully_conv_scores",
           "evaluate_multi_scale"]


def ten_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, 10, C, size, size]``: tl, tr, bl, br, centre, then the same of the mirrored image."""
    from torchvision.transforms.v2 import functional as TF

    if images.dim() != 4:
        raise ValueError(f"ten_crop expects [N, C, H, W], got {tuple(images.shape)}")
    return torch.stack(TF.ten_crop(images, [size, size]), dim=1)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of rows of ``scores [N, C]`` whose top-``k`` (k clipped to C) contains ``labels [N]``."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).sum()


class ClassificationEvaluator:
    """Accumulates top-1/top-5 hits for the centre crop and the 10-crop average.

    ``process(labels [N], logits [N, V, C])``; ``evaluate()`` -> dict of errors in [0, 1] (summed over
    ranks when torch.distributed is initialised) and ``num_images``.
    """

    def __init__(self, *, topk: tuple[int, ...] = (1, 5)):
        self.topk = tuple(topk)
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._multi_view = True
        self._center = {k: 0 for k in self.topk}
        self._avg = {k: 0 for k in self.topk}

    def process(self, labels: torch.Tensor, logits: torch.Tensor) -> None:
        if logits.dim() == 2:
            logits = logits[:, None]
        if logits.dim() != 3 or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"logits must be [N, V, C] with N = len(labels) = {labels.shape[0]}, got {tuple(logits.shape)}")
        logits = logits.float()
        labels = labels.to(logits.device)
        num_views = logits.shape[1]
        self._multi_view = self._multi_view and num_views > 1
        center = logits[:, CENTER_VIEW if num_views == 10 else 0]
        averaged = logits.softmax(dim=2).mean(dim=1)
        for k in self.topk:
            self._center[k] += int(topk_correct(center, labels, k))
            self._avg[k] += int(topk_correct(averaged, labels, k))
        self._n += labels.shape[0]

    def evaluate(self) -> dict[str, Any]:
        counts = torch.tensor([self._n] + [self._center[k] for k in self.topk] + [self._avg[k] for k in self.topk],
                              dtype=torch.float64)
        if is_distributed():
            counts = all_reduce_sum(counts)
            # multi-view only if every rank saw several views: the sum of "single-view" flags is 0
            self._multi_view = not bool(all_reduce_sum(torch.tensor([0.0 if self._multi_view else 1.0])).item())
        n = int(counts[0])
        if n == 0:
            raise ValueError("no images were evaluated")
        out: dict[str, Any] = {"num_images": n}
        for i, k in enumerate(self.topk):
            out[f"top{k}_error_center"] = 1.0 - float(counts[1 + i]) / n
        if self._multi_view:
            for i, k in enumerate(self.topk):
                out[f"top{k}_error_10crop"] = 1.0 - float(counts[1 + len(self.topk) + i]) / n
        return out


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data_loader: Iterable, *, device: torch.device | str = "cpu",
                        amp: str | None = None) -> dict[str, Any]:
    """Run ``model`` (eval mode) over ``(views [N, V, 3, h, w], labels [N])`` batches; return the errors.

    The V views of each image go through the network as one batch of N * V crops; ``amp`` follows
    :mod:`detres.utils.amp` (autocast on CUDA, fp32 on the CPU).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    evaluator = ClassificationEvaluator()
    try:
        for views, labels in data_loader:
            if views.dim() == 4:
                views = views[:, None]
            n, v = views.shape[:2]
            x = views.reshape(n * v, *views.shape[2:]).to(device, non_blocking=True)
            with autocast(amp, device):
                logits = model(x)
            evaluator.process(torch.as_tensor(labels), logits.reshape(n, v, -1))
    finally:
        model.train(was_training)
    return evaluator.evaluate()


def fully_conv_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images [N, 3, H, W]`` -> class score map ``[N, K, h, w]``: the network up to its global average pooling,
    then ``fc`` applied at every position as a 1x1 convolution. For a network that ends in ``avgpool`` + ``fc``
    (the ResNets, the CIFAR nets) the map's mean over positions equals ``model(images)``."""
    pool, fc = getattr(model, "avgpool", None), getattr(model, "fc", None)
    if not isinstance(pool, nn.Module) or not isinstance(fc, nn.Linear):
        raise ValueError(f"the fully-convolutional test needs a classifier ending in avgpool + fc (the ResNets); "
                         f"{type(model).__name__} has none")
    seen: list[torch.Tensor] = []
    handle = pool.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        model(images)
    finally:
        handle.remove()
    features = seen[-1]
    return torch.nn.functional.conv2d(features.float(), fc.weight.float()[:, :, None, None], fc.bias.float()
                                      if fc.bias is not None else None)


@torch.no_grad()
def evaluate_multi_scale(model: nn.Module, data_loader: Iterable, *, device: torch.device | str = "cpu",
                         amp: str | None, flip: bool, topk: tuple[int, ...] = (1, 5)) -> dict[str, Any]:
    """Top-k errors of the fully-convolutional multi-scale test over ``([views, ...], labels [N])`` batches, each
    ``views`` a list of ``[3, h_s, w_s]`` tensors of one image (:class:`detres.data.imagenet.MultiScaleViews`).

    Per image and scale (and mirror with ``flip``): score map (:func:`fully_conv_scores`) averaged over the
    positions, softmax; the probabilities are averaged over the scales. Returns
    ``{"top{k}_error_multiscale": error in [0, 1], "num_images": n}`` (summed over ranks)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    hits = torch.zeros(len(topk) + 1, dtype=torch.float64)
    try:
        for batch_views, labels in data_loader:
            labels = torch.as_tensor(labels)
            probs = []
            for views in batch_views:
                p = 0.0
                for x in views:
                    x = x.to(device)[None]
                    inputs = torch.cat([x, x.flip(-1)]) if flip else x
                    with autocast(amp, device):
                        maps = fully_conv_scores(model, inputs)
                    p = p + maps.float().mean(dim=(2, 3)).softmax(dim=1).sum(dim=0)
                probs.append(p / (len(views) * (2 if flip else 1)))
            scores = torch.stack(probs).cpu()
            hits[0] += len(labels)
            for i, k in enumerate(topk):
                hits[1 + i] += float(topk_correct(scores, labels, k))
    finally:
        model.train(was_training)
    if is_distributed():
        hits = all_reduce_sum(hits)
    n = int(hits[0])
    if n == 0:
        raise ValueError("no images were evaluated")
    out: dict[str, Any] = {"num_images": n}
    for i, k in enumerate(topk):
        out[f"top{k}_error_multiscale"] = 1.0 - float(hits[1 + i]) / n
    return out
