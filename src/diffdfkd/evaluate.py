"""Classification report of a model on labelled images: top-1, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffdfkd.runtime import batchnorm_modules


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, device: str | torch.device | None = None
) -> torch.Tensor:
    """Float32 CPU logits ``[N, K]`` of ``model`` on ``images [N, C, H, W]``.

    The model runs in eval mode (its previous mode is restored) on ``device``: when given, the model
    is moved there; by default, the device of its parameters. ``images`` may stay on the CPU; they
    are moved batch by batch.
    """
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    else:
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        logits = [
            model(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(logits)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (images ``[N, C, H, W]`` in the model's input convention -> logits ``[N, K]``).

    Returns plain Python values, ready for JSON: ``n``, ``top1`` (fraction correct), ``per_class``
    (accuracy per true class, a list of K floats; NaN for a class with no image) and ``confusion``
    (``K x K`` nested lists, rows = true class, columns = predicted class). ``K`` is the model's
    number of outputs; labels must lie in ``[0, K)``.
    """
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"evaluate needs images [N, C, H, W] and labels [N], got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise ValueError("evaluate needs at least one image")
    logits = predict_logits(model, images, batch_size=batch_size, device=device)
    preds, num_classes = logits.argmax(dim=1), logits.shape[1]
    labels = labels.cpu().long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs")
    confusion = confusion_matrix(labels, preds, num_classes)
    support = confusion.sum(dim=1)
    per_class = (confusion.diagonal().double() / support.double()).tolist()  # 0/0 -> NaN
    return {
        "n": len(labels),
        "top1": float((preds == labels).double().mean()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


@torch.no_grad()
def bn_statistics_distance(
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float | None:
    """BatchNorm-statistics distance of the whole set ``images [N, C, H, W]`` to ``teacher``'s running
    statistics, or None when the teacher has no
    BatchNorm layer with running statistics.

    DeepInversion's feature-statistics prior (Yin et al. 2020) with the set as ONE unit: for every
    BatchNorm layer ``l``, ``||mean_l - running_mean_l||_2 + ||var_l - running_var_l||_2``, the mean
    and biased variance per channel over all ``N`` images and positions of the layer input, summed
    over the layers; the value ``guidance.teacher_loss.BNStatistics`` gives with ``Units("batch")`` on
    the whole set in one pass. Lower: the set's features look more like the teacher's training data.

    The teacher runs in eval mode on batches of ``batch_size`` (see ``predict_logits``); each layer
    keeps only float64 sums of ``x`` and ``x^2`` per channel, so memory stays bounded and the value
    does not depend on the batching.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"bn_statistics_distance needs images [N, C, H, W], N >= 1, got {tuple(images.shape)}"
        )
    layers = [m for m in batchnorm_modules(teacher) if m.running_mean is not None]
    if not layers:
        return None
    # per layer the forward pass reached: (count, sum of x per channel, sum of x^2 per channel)
    moments: dict[nn.Module, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].double().transpose(0, 1).flatten(1)  # [C, B * positions]
        count, total, total_sq = moments.get(layer, (0, 0.0, 0.0))
        moments[layer] = (count + x.shape[1], total + x.sum(dim=1), total_sq + x.pow(2).sum(dim=1))

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        predict_logits(teacher, images, batch_size=batch_size, device=device)
    finally:
        for handle in handles:
            handle.remove()
    distance = 0.0
    for layer, (count, total, total_sq) in moments.items():
        mean = total / count
        var = total_sq / count - mean.pow(2)
        distance += float(torch.linalg.vector_norm(mean - layer.running_mean.to(mean)))
        distance += float(torch.linalg.vector_norm(var - layer.running_var.to(var)))
    return distance
