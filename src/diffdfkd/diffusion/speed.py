"""Speed settings for loaded diffusion parts, and a random-weight Stable Diffusion 1.5 builder.

``apply_speed_settings`` changes HOW the sampling loop's models compute, never WHAT they compute
(up to floating-point rounding): the attention kernel (PyTorch's fused ``scaled_dot_product_attention``
or the classic explicit ``softmax(Q K^T) V``), the memory layout (channels_last), ``torch.compile`` of
the UNet, the VAE decoder and the teacher, gradient checkpointing (recompute activations in the
guidance backward pass instead of storing them) and the compute dtype.

``sd15_components`` builds the SD 1.5 architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder, DDPM
with SD's betas) from its config values with RANDOM weights, for benchmarks that need the real shapes
and not the real images. ``tiny=True`` keeps the structure (block types, depth of the UNet and VAE
pyramids, 77 text tokens) at tiny widths, for CPU smoke tests.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from diffdfkd.diffusion.components import (
    TORCH_DTYPES,
    ComponentsError,
    DiffusionComponents,
    resolve_device,
)

ATTENTION_KINDS = ("sdpa", "classic")
COMPILE_PARTS = ("unet", "vae_decoder", "teacher")

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


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in TORCH_DTYPES:
            raise ComponentsError(f"unknown dtype {dtype!r}; choose from {', '.join(TORCH_DTYPES)}")
        return TORCH_DTYPES[dtype]
    if dtype not in TORCH_DTYPES.values():
        raise ComponentsError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    return dtype


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffdfkd.worlds.tokenizer import BOS, EOS, PAD, build_tokenizer

    dtype = _resolve_dtype(dtype)
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


def set_attention(components: DiffusionComponents, kind: str) -> None:
    """Attention kernel of the UNet and the VAE: ``"sdpa"`` (fused ``F.scaled_dot_product_attention``,
    no ``[L, L]`` score matrix kept) or ``"classic"`` (explicit ``softmax(Q K^T / sqrt(d)) V``, the
    pre-PyTorch-2 diffusers path). Same mathematics, other memory and speed."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose from {', '.join(ATTENTION_KINDS)}")
    for model in (components.unet, components.vae):
        model.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def set_gradient_checkpointing(components: DiffusionComponents, enabled: bool) -> None:
    """Recompute UNet and VAE-decoder activations in the backward pass (same gradients, less memory)."""
    for model in (components.unet, components.vae):
        if enabled:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()


def set_dtype(components: DiffusionComponents, dtype: str | torch.dtype) -> None:
    """Compute dtype of the model calls (autocast), with parameters cast on CUDA as ``load_components``
    does (fp32 parameters elsewhere)."""
    dtype = _resolve_dtype(dtype)
    param_dtype = dtype if components.device.type == "cuda" else torch.float32
    for model in (components.unet, components.vae, components.text_encoder):
        if next(model.parameters()).dtype != param_dtype:
            model.to(dtype=param_dtype)
    components.dtype = dtype


def apply_speed_settings(
    components: DiffusionComponents,
    teacher: nn.Module | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    attention: str | None = None,
    channels_last: bool | None = None,
    grad_checkpointing: bool | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    compile_parts: tuple[str, ...] = COMPILE_PARTS,
) -> DiffusionComponents:
    """Apply speed settings to ``components`` (and ``teacher``) in place; return ``components``.

    ``None`` leaves a setting as it is. ``attention``: ``"sdpa"`` | ``"classic"`` (see ``set_attention``).
    ``channels_last``: NHWC memory layout of the UNet, VAE and teacher convolutions (faster tensor-core
    convolutions on CUDA). ``grad_checkpointing``: see ``set_gradient_checkpointing``. ``compile``:
    ``torch.compile`` the ``compile_parts`` (of ``COMPILE_PARTS``: the UNet, the VAE decoder, the
    teacher's network) in place (``nn.Module.compile``, so ``components.unet.config`` and the teacher's
    BatchNorm layers stay reachable; the BN-statistics hooks the guide adds per call still fire).
    Compilation happens on the first call of each model: time only after a warm-up. It cannot be
    undone: apply it last.
    """
    unknown = sorted(set(compile_parts) - set(COMPILE_PARTS))
    if unknown:
        raise ValueError(f"unknown compile part(s) {unknown}; choose from {', '.join(COMPILE_PARTS)}")
    if dtype is not None:
        set_dtype(components, dtype)
    if attention is not None:
        set_attention(components, attention)
    if grad_checkpointing is not None:
        set_gradient_checkpointing(components, grad_checkpointing)
    nets = [components.unet, components.vae]
    teacher_net = getattr(teacher, "model", teacher) if teacher is not None else None
    if teacher_net is not None:
        nets.append(teacher_net)
    if channels_last is not None:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for net in nets:
            net.to(memory_format=memory_format)
    if compile:
        options: dict[str, Any] = {"backend": compile_backend}
        if compile_mode is not None:
            options["mode"] = compile_mode
        parts = {"unet": components.unet, "vae_decoder": components.vae.decoder, "teacher": teacher_net}
        for name in compile_parts:
            if parts[name] is not None:
                parts[name].compile(**options)
    return components
