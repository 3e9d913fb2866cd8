"""Speed settings for loaded diffusion parts.

``apply_speed_settings`` changes HOW the sampling loop's models compute, never WHAT they compute
(up to floating-point rounding): the attention kernel (PyTorch's fused ``scaled_dot_product_attention``
or the classic explicit ``softmax(Q K^T) V``), the memory layout (channels_last), ``torch.compile`` of
the UNet, the VAE decoder and the teacher, gradient checkpointing (recompute activations in the
guidance backward pass instead of storing them) and the compute dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffdfkd.diffusion.components import DiffusionComponents
from diffdfkd.runtime import resolve_dtype

ATTENTION_KINDS = ("sdpa", "classic")
COMPILE_PARTS = ("unet", "vae_decoder", "teacher")


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
    dtype = resolve_dtype(dtype)
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
    teacher_net = teacher.network if teacher is not None else None
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
