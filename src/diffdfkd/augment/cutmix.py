"""Latent CutMix (DiffDFKD, Qi et al. 2025): paste a box of one sample's latent into another's mid-trajectory.

The remaining denoising steps heal the seams, so diversity rises at no extra model cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


class LatentCutMix:
    """``aug(z [B, C, h, w], targets [B, K], generators) -> (z, targets)``, applied per mixing group.

    ``generators`` holds one ``torch.Generator`` per mixing group (``B / len(generators)`` consecutive
    samples each); all randomness of a group comes from its own generator, so the result does not
    depend on how groups are batched. Per group and call:

    - ``alpha ~ Beta(1, 1)``, ``lambda ~ Beta(alpha, alpha)``;
    - a box of ``int(sqrt(1 - lambda) h)`` by ``int(sqrt(1 - lambda) w)`` latent pixels at a uniform
      random centre, clipped to the latent;
    - every sample gets a partner from its group (a random cyclic pairing, never itself) and all
      channels of its box are replaced by the partner's box (read from ``z`` before any pasting);
    - same-class (default): partners share the target class (``argmax`` of the target row) and targets
      are unchanged; a sample alone in its class within the group is left as it is.
      ``cross_class=True``: any partner in the group; targets become
      ``(1 - a) * own + a * partner's`` with ``a`` the box's actual area fraction.

    ``at``: fractions of the schedule; ``applies(i, n)`` is true at steps ``round(f * n)``.
    """

    def __init__(self, at: Sequence[float] = (0.2, 0.4, 0.6, 0.8), *, cross_class: bool = False) -> None:
        if any(not 0.0 < f < 1.0 for f in at):
            raise ValueError(f"CutMix fractions must lie in (0, 1), got {tuple(at)}")
        self.at = tuple(at)
        self.cross_class = cross_class

    def applies(self, step: int, num_steps: int) -> bool:
        """Whether to mix at (0-based) step ``step`` of ``num_steps``."""
        return step in {round(f * num_steps) for f in self.at}

    def __call__(
        self, z: torch.Tensor, targets: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = z.shape
        if not generators or batch % len(generators):
            raise ValueError(f"a batch of {batch} is not a whole number of {len(generators)} mixing groups")
        group_size = batch // len(generators)
        mixed_z, mixed_targets = z.clone(), targets.clone()
        classes = targets.argmax(dim=1).tolist()
        for g, generator in enumerate(generators):
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
            (y1, y2, x1, x2), partner = self._draw(rng, height, width, classes, g * group_size, group_size)
            if not partner:
                continue
            own = torch.tensor(list(partner), device=z.device)
            other = torch.tensor(list(partner.values()), device=z.device)
            mixed_z[own, :, y1:y2, x1:x2] = z[other, :, y1:y2, x1:x2]
            if self.cross_class:
                area = (y2 - y1) * (x2 - x1) / (height * width)
                mixed_targets[own] = (1 - area) * targets[own] + area * targets[other]
        return mixed_z, mixed_targets

    def _draw(
        self, rng: np.random.Generator, height: int, width: int, classes: list[int], start: int, size: int
    ) -> tuple[tuple[int, int, int, int], dict[int, int]]:
        """One group's box ``(y1, y2, x1, x2)`` and its pairing ``{sample: partner}``."""
        alpha = max(rng.beta(1.0, 1.0), 1e-6)
        lam = rng.beta(alpha, alpha)
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        top, left = int(rng.integers(height)) - cut_h // 2, int(rng.integers(width)) - cut_w // 2
        box = (max(top, 0), min(top + cut_h, height), max(left, 0), min(left + cut_w, width))
        members = list(range(start, start + size))
        if self.cross_class:
            pools = [members]
        else:
            pools = [
                [i for i in members if classes[i] == c] for c in dict.fromkeys(classes[i] for i in members)
            ]
        partner: dict[int, int] = {}
        for pool in pools:
            if len(pool) < 2:
                continue
            order = [pool[j] for j in rng.permutation(len(pool))]
            partner.update({order[j]: order[(j + 1) % len(order)] for j in range(len(order))})
        return box, partner
