"""What one training step optimises: ``task(model, images, labels) -> named losses``.

- ``SupervisedTask``: cross-entropy on the labels (teacher training, real-data baselines).
- ``DistillTask``: KD from a frozen teacher run on the same (augmented) images (docs/method.md,
  stage 2)::

      loss = T^2 * KL(softmax(t / T) || softmax(s / T)) + ce_weight * CE(s, labels)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from diffdfkd.distill.losses import kd_loss

Losses = dict[str, torch.Tensor]


class Task(Protocol):
    """``task(model, images [B, C, H, W], labels [B]) -> named losses``; ``"loss"`` is optimised,
    every entry is logged."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Losses: ...


class SupervisedTask:
    """Cross-entropy on the labels (teacher training, real-data baselines)."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        ce = F.cross_entropy(model(images).float(), labels)
        return {"loss": ce}


@dataclass
class DistillTask:
    """KD from a frozen ``teacher`` run on the same (augmented) images: ``kd + ce_weight * ce``."""

    teacher: nn.Module
    temperature: float
    ce_weight: float

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        student_logits = model(images)
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        ce = F.cross_entropy(student_logits.float(), labels)
        return {"loss": kd + self.ce_weight * ce, "kd": kd, "ce": ce}
