"""What ``fit`` takes and gives: an in-memory labelled image set, a seeded holdout split, the checks that
fail early on data a model cannot take, and the result of a run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffdfkd.errors import UserError


class FitError(UserError, ValueError):
    """Training cannot start or resume as asked; the message says why and what to change."""


@dataclass(frozen=True)
class TensorData:
    """A labelled image set in memory: ``images [N, C, H, W]`` float in [0, 1], ``labels [N]`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or not self.images.is_floating_point():
            raise FitError(
                f"images must be a float tensor [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != torch.long or len(self.labels) != len(self.images):
            raise FitError(
                f"labels must be an int64 tensor [N] with N = {len(self.images)}, got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorData:
        """The images and labels at ``index`` (a ``[M]`` index tensor)."""
        return TensorData(self.images[index], self.labels[index])


def split_holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into sorted ``(train_idx, holdout_idx)`` index tensors.

    The holdout gets ``round(n * fraction)`` items (at least one when ``fraction > 0``); not stratified.
    """
    if not 0.0 <= fraction < 1.0:
        raise FitError(f"holdout fraction must lie in [0, 1), got {fraction}")
    size = 0 if fraction == 0 else max(1, round(n * fraction))
    if size >= n:
        raise FitError(f"a holdout of {size} of {n} items leaves nothing to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size].sort().values


@dataclass
class FitResult:
    """What ``fit`` did: one ``history`` row per epoch (the ``metrics.csv`` columns) and the best holdout
    epoch. The reported result is the LAST epoch (``last``); ``best_*`` is for model selection on
    held-out synthetic data only."""

    out_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_holdout: float | None = None

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def holdout_top1(self) -> float | None:
        """Last epoch's holdout accuracy against the holdout labels (None without a holdout)."""
        return self.last.get("holdout_top1")

    @property
    def holdout_agreement(self) -> float | None:
        """Last epoch's agreement with the teacher's argmax on the holdout (KD only)."""
        return self.last.get("holdout_agreement")


class Normalized(nn.Module):
    """``model((images - mean) / std)``: feeds a model that expects normalised inputs from [0, 1] images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def check_inputs(
    net: nn.Module, teacher: nn.Module | None, train: TensorData, holdout: TensorData | None, role: str
) -> None:
    """Fail early, with a clear message, on data the model or teacher cannot take."""
    sample = train.images[:1].to(next(net.parameters()).device)
    name = type(net.model if isinstance(net, Normalized) else net).__name__
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(sample)
    except RuntimeError as error:
        raise FitError(
            f"{role} {name} cannot take images of shape {tuple(train.images.shape[1:])}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    finally:
        net.train(was_training)
    if out.ndim != 2:
        raise FitError(f"{role} {name} must return logits [B, K], got shape {tuple(out.shape)}")
    num_classes = out.shape[1]
    if teacher is not None:
        try:
            with torch.no_grad():
                teacher_classes = teacher(sample).shape[1]
        except RuntimeError as error:
            raise FitError(
                f"the teacher cannot take images of shape {tuple(train.images.shape[1:])}: "
                f"{str(error).splitlines()[0]}"
            ) from None
        if teacher_classes != num_classes:
            raise FitError(f"the teacher has {teacher_classes} classes but {role} {name} has {num_classes}")
    for part, data in (("train", train), ("holdout", holdout)):
        if data is None or len(data) == 0:
            continue
        if data.images.shape[1:] != train.images.shape[1:]:
            raise FitError(
                f"holdout images {tuple(data.images.shape[1:])} differ from train images "
                f"{tuple(train.images.shape[1:])}"
            )
        if data.labels.min() < 0 or data.labels.max() >= num_classes:
            raise FitError(
                f"{part} labels lie in [{int(data.labels.min())}, {int(data.labels.max())}] but {role} "
                f"{name} has {num_classes} classes"
            )
        low, high = float(data.images.min()), float(data.images.max())
        if low < 0.0 or high > 1.0:
            raise FitError(f"{part} images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]")
