"""The teacher guide: predicted clean latents -> images -> teacher -> loss -> gradient on z_t.

``TeacherGuide`` is the only piece that knows the teacher. The sampler calls it with the predicted
clean latents ``x0_hat`` (still attached to the graph that made them from ``z_t``) and gets back
``grad_{z_t} L`` and the named losses:

    image = decode(x0_hat)                    # VAE decoder, [B, 3, H, W] in [0, 1]
    logits = T(image)                         # the Teacher resizes and normalises itself
    L = w_ce * CE(logits, y) + w_bn * L_bn + w_adv * L_adv
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffdfkd.errors import UserError
from diffdfkd.guidance.teacher_loss import BNStatistics, Units, adversarial, cross_entropy


class GuidanceError(UserError, RuntimeError):
    """Guidance that cannot go on: a non-finite loss or gradient, or a gradient that never reaches z_t
    (the CLI prints it as an error, exit 2: the batches written before it are kept)."""


@dataclass
class GuideOutput:
    """``grad`` ``[B, C, h, w]``: d L / d z_t; ``losses``: named scalars for logging (``total`` included)."""

    grad: torch.Tensor
    losses: dict[str, float]


Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], GuideOutput]
"""``guide(x0_hat [B, C, h, w], z [B, C, h, w] (requires grad), targets [B, K]) -> GuideOutput``."""


class TeacherGuide:
    """Teacher guidance on the decoded predicted clean image (DiffDFKD, Qi et al. 2025, Fig. 1).

    Args:
        teacher: a ``models.Teacher``, ``images [B, 3, H, W] in [0, 1] -> logits [B, K]``; its
            ``network`` holds the BatchNorm layers whose running statistics ``L_bn`` matches.
        decode: clean latents ``[B, C, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1], differentiable.
        group_size: samples per mixing group.
        bn_per: the units of ``L_bn`` (``teacher_loss``'s batch semantics): ``group`` (default: each
            mixing group's pooled statistics, one distance per group) or ``sample`` (the paper's batch
            of one: each image's own statistics, one distance per image). CE and ``L_adv`` are per
            sample, summed over the batch.
        ce_weight, bn_weight, adv_weight: the loss weights (paper: 1, 0.1, 0).
        student: for ``L_adv``, ``images in [0, 1] -> logits``; needed only when ``adv_weight > 0``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        decode: Callable[[torch.Tensor], torch.Tensor],
        *,
        group_size: int,
        bn_per: str = "group",
        ce_weight: float = 1.0,
        bn_weight: float = 0.1,
        adv_weight: float = 0.0,
        student: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if adv_weight > 0 and student is None:
            raise ValueError("guidance.adv_weight > 0 needs a student to measure disagreement against")
        self.teacher = teacher
        self.decode = decode
        self.bn_units = Units(bn_per, group_size if bn_per == "group" else 1)
        self.sample_units = Units("sample")
        self.ce_weight = ce_weight
        self.bn_weight = bn_weight
        self.adv_weight = adv_weight
        self.student = student

    def loss(self, x0_hat: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L`` (a scalar attached to ``x0_hat``'s graph) and its named parts."""
        images = self.decode(x0_hat)
        with BNStatistics(self.teacher.network, self.bn_units) if self.bn_weight > 0 else _NoBN() as bn:
            logits = self.teacher(images).float()
            bn_loss = bn.loss()
        ce = cross_entropy(logits, targets, self.sample_units)
        total = self.ce_weight * ce + self.bn_weight * bn_loss
        losses = {"ce": ce.item(), "bn": bn_loss.item()}
        if self.adv_weight > 0:
            adv = adversarial(logits, self.student(images), self.sample_units)
            total = total + self.adv_weight * adv
            losses["adv"] = adv.item()
        probs = logits.detach().softmax(dim=1)
        losses["p_target"] = (probs * targets).sum(dim=1).mean().item()
        losses["total"] = total.item()
        return total, losses

    def __call__(self, x0_hat: torch.Tensor, z: torch.Tensor, targets: torch.Tensor) -> GuideOutput:
        """``grad_z L`` through whatever graph links ``z`` to ``x0_hat`` (the UNet, in full mode)."""
        total, losses = self.loss(x0_hat, targets)
        if not total.requires_grad:
            raise GuidanceError(
                "the guidance loss does not depend on z_t: x0_hat was computed without gradients "
                "(the reference code's bug, which makes guidance a no-op)"
            )
        (grad,) = torch.autograd.grad(total, z, allow_unused=True)
        if grad is None:
            raise GuidanceError("the guidance gradient does not reach z_t: x0_hat is detached from z_t")
        return GuideOutput(grad=grad, losses=losses)


class _NoBN:
    """Stand-in for ``BNStatistics`` when its weight is 0: no hooks, a zero loss."""

    def __enter__(self) -> _NoBN:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def loss(self) -> torch.Tensor:
        return torch.zeros(())
