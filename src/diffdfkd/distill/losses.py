"""Distillation losses (docs/method.md, stage 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD loss ``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    ``student_logits``, ``teacher_logits``: ``[B, K]``. The ``T^2`` factor keeps the gradient scale
    independent of ``T``. Computed in float32 (logits may come out of bf16 autocast); the teacher side
    carries no gradient. Returns a scalar, 0 when the logits agree.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"kd_loss needs student and teacher logits of the same shape [B, K], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
