"""The training helpers every trainer shares: one EMA of weights and one learning-rate schedule.

- ``ModelEma(model, decay, warmup=False)``: ``ema = d * ema + (1 - d) * w`` after every optimiser step,
  for parameters and float buffers (BatchNorm statistics); integer buffers are copied. ``d = decay``,
  or with ``warmup`` ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` (an early EMA that follows
  the fast-moving first weights).
- ``warmup_cosine(step, total, warmup)``: the lr multiplier of a linear warm-up over ``warmup`` steps,
  then a cosine from 1 to 0 at step ``total``.
- ``lr_factor(recipe, step, steps_per_epoch)``: a ``DistillConfig`` recipe's multiplier: that warm-up
  and cosine, or steps of ``lr_decay`` at ``milestones``.
- ``build_optimizer(model, recipe)``: SGD (momentum, no Nesterov) or AdamW over the trainable parameters.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from diffdfkd.config import DistillConfig


class ModelEma:
    """Exponential moving average of a model's weights, held in ``module`` (a frozen copy in eval mode)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup

    def decay_at(self, step: int) -> float:
        """The decay of update ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """Fold ``model``'s current weights in (``step``: the update's index, read with ``warmup``)."""
        keep = self.decay_at(step)
        for ema, current in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema.is_floating_point():  # d * ema + (1 - d) * w in this order (not lerp_): the bits
                ema.mul_(keep).add_(current, alpha=1.0 - keep)  # the shipped generators were trained with
            else:
                ema.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


def warmup_cosine(step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base lr at step ``step`` (0-based) of ``total``: linear warm-up to 1 over
    ``warmup`` steps, then ``0.5 (1 + cos(pi p))`` with ``p = (step - warmup) / (total - warmup)``, held
    at 0 past ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    if step - warmup >= span:
        return 0.0
    # pi (step - warmup) / span in this order: the bits the shipped generators were trained with
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


def lr_factor(recipe: DistillConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at optimiser step ``step`` (0-based): linear warmup over
    ``warmup_epochs``, then cosine to 0 or steps of ``lr_decay`` at ``milestones`` (fractions of the epochs)."""
    warmup = recipe.warmup_epochs * steps_per_epoch
    if step < warmup or recipe.schedule == "cosine":
        return warmup_cosine(step, recipe.epochs * steps_per_epoch, warmup)
    epoch = step / steps_per_epoch
    passed = sum(epoch >= m * recipe.epochs for m in recipe.milestones)
    return recipe.lr_decay**passed


def build_optimizer(model: nn.Module, recipe: DistillConfig) -> torch.optim.Optimizer:
    """``recipe.optimizer`` over ``model``'s trainable parameters, at ``recipe.lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=False
        )
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
