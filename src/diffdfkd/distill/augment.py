"""Image augmentation for training on tensors: random crop with padding, horizontal flip, small affine.

Each augmentation is a small callable ``aug(images [B, C, H, W], generator) -> images`` drawing its
randomness from the given (CPU) ``torch.Generator`` only, so a seed fixes the result; ``Compose``
chains them. No torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class RandomAffine:
    """Small random rotation (+-``max_rotation_deg``), scale (+-``max_scale``) and shift
    (+-``max_shift_px``) per image, black fill, no flips (for digits)."""

    max_rotation_deg: float
    max_scale: float
    max_shift_px: float

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        u = torch.rand(b, 4, generator=generator) * 2 - 1
        angle = u[:, 0] * math.radians(self.max_rotation_deg)
        scale = 1 + u[:, 1] * self.max_scale
        shift = u[:, 2:] * (2 * self.max_shift_px / torch.tensor([w, h]))  # pixels -> normalised coords
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        ).to(images)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class RandomCrop:
    """Pad by ``padding`` on each side with ``fill`` (0: black, 1: white), then crop back to ``H x W`` at
    a random offset per image."""

    padding: int
    fill: float = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.padding == 0:
            return images
        b, _, h, w = images.shape
        p, device = self.padding, images.device
        offset_y = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(device)
        offset_x = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(device)
        rows = offset_y[:, None] + torch.arange(h, device=device)  # [B, H]
        cols = offset_x[:, None] + torch.arange(w, device=device)  # [B, W]
        padded = F.pad(images, (p, p, p, p), value=self.fill).permute(0, 2, 3, 1)  # [B, H + 2p, W + 2p, C]
        batch = torch.arange(b, device=device)[:, None, None]
        crops = padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
        return crops.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class RandomHFlip:
    """Mirror each image left-right with probability ``p``. Wrong for digits and text."""

    p: float = 0.5

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(images.shape[0], generator=generator) < self.p
        return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


@dataclass(frozen=True)
class ColorJitter:
    """Scale each image's brightness, contrast and saturation by factors drawn from ``1 +- strength``
    (images in [0, 1], ``[B, 3, H, W]``; clamped back to [0, 1])."""

    strength: float

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = images.shape[0]
        f = (1 + (torch.rand(b, 3, generator=generator) * 2 - 1) * self.strength).to(images)[
            :, :, None, None, None
        ]
        x = images * f[:, 0]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * f[:, 1] + mean
        grey = x.mean(dim=1, keepdim=True)
        return ((x - grey) * f[:, 2] + grey).clamp(0, 1)


@dataclass(frozen=True)
class Compose:
    """Apply ``augments`` in order."""

    augments: Sequence[Augment]

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for augment in self.augments:
            images = augment(images, generator)
        return images


def build_augment(
    crop_padding: int, hflip: bool, crop_fill: float = 0.0, color_jitter: float = 0.0
) -> Augment | None:
    """The training augmentation of a recipe (``DistillConfig.crop_padding``, ``crop_fill``, ``hflip``,
    ``color_jitter``); None for none."""
    augments: list[Augment] = []
    if crop_padding > 0:
        augments.append(RandomCrop(crop_padding, crop_fill))
    if hflip:
        augments.append(RandomHFlip())
    if color_jitter > 0:
        augments.append(ColorJitter(color_jitter))
    return Compose(tuple(augments)) if augments else None
