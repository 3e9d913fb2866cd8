"""A random-weight Stable Diffusion 1.5 builder, for benchmarks and tests that need its shapes.

``sd15_components`` builds the SD 1.5 architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder, DDPM
with SD's betas) from its config values with RANDOM weights, for benchmarks that need the real shapes
and not the real images. ``tiny=True`` keeps the structure (block types, depth of the UNet and VAE
pyramids, 77 text tokens) at tiny widths, for CPU smoke tests. Not part of the library: nothing in
``src/`` needs random weights.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from diffdfkd.diffusion.components import DiffusionComponents  # noqa: E402
from diffdfkd.runtime import resolve_device, resolve_dtype  # noqa: E402
from diffdfkd.worlds.tokenizer import BOS, EOS, PAD, build_tokenizer  # noqa: E402

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5) config values.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}
SD15_VAE: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}
SD15_TEXT: dict[str, Any] = {  # CLIP ViT-L/14 text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
# The same structure at tiny widths (and one layer per block): CPU smoke tests.
TINY_UNET = {
    **SD15_UNET,
    "sample_size": 16,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
}
TINY_VAE = {
    **SD15_VAE,
    "sample_size": 128,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
TINY_TEXT = {
    **SD15_TEXT,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}


def sd15_components(
    tiny: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "fp32",
    *,
    seed: int = 0,
) -> DiffusionComponents:
    """The Stable Diffusion 1.5 architecture with random weights, as ``DiffusionComponents``.

    UNet ``UNet2DConditionModel`` (latents ``[B, 4, 64, 64]``, 860M parameters), VAE ``AutoencoderKL``
    (factor 8, scaling 0.18215), CLIP ViT-L/14 text encoder (77 tokens x 768), DDPM with SD's
    scaled-linear betas 0.00085 .. 0.012 over 1000 steps. The tokenizer is the digits world's
    word-level one padded to 77 tokens: the text encoder sees SD's sequence length, not its words.
    ``tiny``: tiny widths (latents 16 x 16, images 128 px). ``device`` may be ``"meta"`` (shapes
    only, for counting FLOPs without memory). Parameters follow ``load_components``: ``dtype`` on
    CUDA, fp32 with autocast elsewhere.
    """
    dtype = resolve_dtype(dtype)
    device = torch.device("meta") if str(device) == "meta" else resolve_device(device)
    unet_config, vae_config, text_config = (
        (TINY_UNET, TINY_VAE, TINY_TEXT) if tiny else (SD15_UNET, SD15_VAE, SD15_TEXT)
    )
    tokenizer = build_tokenizer(max_length=int(text_config["max_position_embeddings"]))
    ids = tokenizer.convert_tokens_to_ids([PAD, BOS, EOS])
    torch.manual_seed(seed)
    # Built on the target device directly: 4 GB of fp32 weights need not pass through the CPU.
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(**text_config, pad_token_id=ids[0], bos_token_id=ids[1], eos_token_id=ids[2])
        )
    for model in (unet, vae, text_encoder):
        if device.type == "cuda" and dtype != torch.float32:
            model.to(dtype=dtype)
        model.eval().requires_grad_(False)
    return DiffusionComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDPMScheduler(**SD15_SCHEDULER),
        prediction_type="epsilon",
        device=device,
        dtype=dtype,
    )
