"""Latent augmentations applied inside the sampling loop."""

from diffdfkd.augment.cutmix import LatentCutMix

__all__ = ["LatentCutMix"]
