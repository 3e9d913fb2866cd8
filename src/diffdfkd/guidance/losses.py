"""The teacher-guidance losses: BatchNorm-statistics matching, cross-entropy, adversarial.

Every loss is a SUM over samples (CE, adversarial) or over mixing groups (BN statistics), never a mean
over the batch, so a sample's gradient depends only on its own mixing group and not on how many
groups share its batch. With the reference's batch of one these equal the paper's per-sample losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BNStatsLoss:
    """DeepInversion's feature-statistics prior (Yin et al. 2020), per mixing group.

    Forward hooks on every BatchNorm layer of ``model`` record the layer input ``x [B, C, ...]``. For
    each group ``g`` of ``group_size`` consecutive samples and each layer ``l``:
    ``L_bn = sum_l sum_g ||mean_g(x_l) - running_mean_l||_2 + ||var_g(x_l) - running_var_l||_2``
    (unsquared L2 norms, biased variance over the group's samples and spatial positions).

    Use as a context manager or call ``remove()``; ``loss()`` reads the last forward pass.
    """

    def __init__(self, model: nn.Module, group_size: int) -> None:
        self.group_size = group_size
        self._values: list[torch.Tensor] = []
        self._handles = [
            module.register_forward_hook(self._hook)
            for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]
        if not self._handles:
            raise ValueError("the teacher has no BatchNorm layer: the BN-statistics loss needs one")

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        batch, channels = x.shape[:2]
        if batch % self.group_size:
            raise ValueError(f"batch of {batch} is not a whole number of groups of {self.group_size}")
        groups = x.reshape(batch // self.group_size, self.group_size, channels, -1).transpose(1, 2)
        groups = groups.reshape(batch // self.group_size, channels, -1)  # [G, C, group_size * spatial]
        mean = groups.mean(dim=2)
        var = groups.var(dim=2, unbiased=False)
        mean_term = torch.linalg.vector_norm(mean - module.running_mean.float(), dim=1)
        var_term = torch.linalg.vector_norm(var - module.running_var.float(), dim=1)
        self._values.append((mean_term + var_term).sum())

    def reset(self) -> None:
        self._values = []

    def loss(self) -> torch.Tensor:
        """Sum over hooked layers and groups since the last ``reset()``; a scalar."""
        if not self._values:
            raise RuntimeError("no BatchNorm statistics recorded: run the teacher first")
        return torch.stack(self._values).sum()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> BNStatsLoss:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``sum_i -sum_k targets[i, k] log softmax(logits[i])_k`` for ``logits, targets [B, K]``.

    Soft targets (rows summing to 1) come from cross-class CutMix; one-hot rows give the usual CE.
    """
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum()


def adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``-sum_i KL(p_T(x_i) || p_S(x_i)) * 1[argmax p_S(x_i) = argmax p_T(x_i)]`` (CMI / Fast-Datafree).

    Minimising it pushes samples the student already agrees on towards teacher-student disagreement.
    Summed over samples (the paper's mean, at its batch of one). ``[B, K]`` logits -> scalar.
    """
    log_p_t = F.log_softmax(teacher_logits.float(), dim=1)
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    agree = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()
    return -(kl * agree).sum()
