"""Latent diffusion: loading a Stable-Diffusion-style pipeline folder and THE sampling loop."""

from diffdfkd.diffusion.components import (
    DiffusionComponents,
    decode_latents,
    encode_prompts,
    load_components,
)
from diffdfkd.diffusion.sampler import SampleOutput, sample

__all__ = [
    "DiffusionComponents",
    "SampleOutput",
    "decode_latents",
    "encode_prompts",
    "load_components",
    "sample",
]
