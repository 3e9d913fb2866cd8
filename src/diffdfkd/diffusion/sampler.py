"""THE sampling loop: classifier-free guidance, an optional gradient guide, latent augmentations.

The loop knows nothing of the teacher: it hands a guide the predicted clean latents and gets back
``grad_{z_t} L``. Per step ``t`` (schedule of ``N`` steps, ``abar_t`` the cumulative signal fraction):

1. if the guide is active at this step, in mode ``full`` or ``detach_unet``:
   ``eps = eps_u + s (eps_c - eps_u)`` (one batched UNet call, with gradients in ``full``),
   ``x0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, ``z_t <- z_t - eta grad_{z_t} L(x0_hat)``;
2. the augmentations that apply at this step (Latent CutMix at N/5 .. 4N/5): ``z_t, y <- aug(z_t, y)``;
3. ``eps`` at the (updated) ``z_t`` without gradients — or, in mode ``one_pass`` when the guide is
   active, with gradients and the classifier-guidance correction
   ``eps' = eps + sqrt(1 - abar_t) eta grad_{z_t} L`` (which lowers ``L`` of ``x0_hat``);
   then ``z_{t-1} = scheduler.step(eps, t, z_t, generator=<per-sample generators>)``.

So a guided step costs two CFG UNet passes plus one backward (``full``), or one pass plus one backward
(``one_pass``); an unguided step costs one pass. ``detach_unet`` runs the first pass without gradients:
``grad_{z_t} L = grad_{x0_hat} L / sqrt(abar_t)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffdfkd.config import GuidanceConfig
from diffdfkd.diffusion.components import DiffusionComponents, decode_latents
from diffdfkd.guidance.guide import GuidanceError, Guide


class Augmentation(Protocol):
    """A latent augmentation: ``aug(z [B, C, h, w], targets [B, K], group_generators) -> (z, targets)``."""

    def applies(self, step: int, num_steps: int) -> bool: ...

    def __call__(
        self, z: torch.Tensor, targets: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Intermediate:
    """Decoded ``x0_hat`` after an augmentation step: ``images [B, 3, H, W]`` in [0, 1], ``targets [B, K]``."""

    step: int
    images: torch.Tensor
    targets: torch.Tensor


@dataclass
class SampleOutput:
    """``images [B, 3, H, W]`` in [0, 1]; ``targets [B, K]`` (soft after cross-class mixing);
    ``latents [B, C, h, w]`` the final clean latents; ``logs``: one dict per guided step."""

    images: torch.Tensor
    targets: torch.Tensor
    latents: torch.Tensor
    intermediates: list[Intermediate] = field(default_factory=list)
    logs: list[dict[str, float]] = field(default_factory=list)


def guidance_active(guidance: GuidanceConfig, step: int, num_steps: int) -> bool:
    """Guide at ``step`` iff the mode is not ``none``, ``step / N`` lies in the window and ``step % every == 0``."""
    fraction = step / num_steps
    return (
        guidance.mode != "none"
        and guidance.window_start <= fraction < guidance.window_end
        and step % guidance.every == 0
    )


def alpha_bar(scheduler: object, step: int, timestep: torch.Tensor) -> float:
    """``abar_t`` of the model input at this step.

    Variance-preserving schedulers (``init_noise_sigma == 1``): ``alphas_cumprod[t]``. Sigma schedulers
    (Euler): the model input is ``z / sqrt(1 + sigma^2)``, so ``abar = 1 / (1 + sigma^2)``.
    """
    if float(scheduler.init_noise_sigma) != 1.0:
        sigma = float(scheduler.sigmas[step])
        return 1.0 / (1.0 + sigma**2)
    return float(scheduler.alphas_cumprod[int(timestep)])


def predict_x0(z_in: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    """``x0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM eq. 15), differentiable in both."""
    return (z_in - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)


def cfg_eps(
    components: DiffusionComponents,
    z_in: torch.Tensor,
    timestep: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg_scale: float,
    abar: float,
) -> torch.Tensor:
    """``eps = eps_u + s (eps_c - eps_u)`` from one batched UNet call (a single call when ``s == 1``).

    ``z_in [B, C, h, w]`` is the scaled model input; ``cond``/``uncond [B, L, D]``. A v-predicting UNet's
    output is converted: ``eps = sqrt(abar) v + sqrt(1 - abar) z_t``. Returns fp32 ``[B, C, h, w]``.
    """
    with components.autocast():
        if cfg_scale == 1.0:
            out = components.unet(z_in, timestep, encoder_hidden_states=cond).sample.float()
        else:
            both = components.unet(
                torch.cat([z_in, z_in]), timestep, encoder_hidden_states=torch.cat([uncond, cond])
            ).sample.float()
            out_u, out_c = both.chunk(2)
            out = out_u + cfg_scale * (out_c - out_u)
    if components.prediction_type == "v_prediction":
        out = math.sqrt(abar) * out + math.sqrt(1.0 - abar) * z_in.float()
    return out


def sample(
    components: DiffusionComponents,
    *,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    targets: torch.Tensor,
    generators: Sequence[torch.Generator],
    group_generators: Sequence[torch.Generator] = (),
    latent_size: int,
    num_steps: int,
    cfg_scale: float,
    guidance: GuidanceConfig,
    guide: Guide | None = None,
    augmentations: Sequence[Augmentation] = (),
    keep_intermediates: bool = False,
) -> SampleOutput:
    """Sample ``B`` images with CFG, optional teacher guidance and latent augmentations.

    Args:
        cond, uncond: text embeddings ``[B, L, D]`` (prompt and negative prompt).
        targets: ``[B, K]`` one-hot or soft targets handed to the guide and the augmentations.
        generators: one CPU ``torch.Generator`` per sample: its ``z_T`` and all its stochastic noise.
        group_generators: one per mixing group, for the augmentations.
        latent_size: side ``h = w`` of the latents.
        guidance: mode (none | full | detach_unet | one_pass), step size ``eta``, window, every.
        guide: ``guide(x0_hat, z_t, targets) -> GuideOutput``; required unless the mode is ``none``.
        keep_intermediates: also decode ``x0_hat`` after each augmentation step.

    Raises ``GuidanceError`` naming the step when the loss or gradient is not finite.
    """
    if guidance.mode != "none" and guide is None:
        raise ValueError(f"guidance mode {guidance.mode!r} needs a guide")
    device = components.device
    batch = targets.shape[0]
    if len(generators) != batch:
        raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {batch}")
    scheduler = components.scheduler
    scheduler.set_timesteps(num_steps, device=device)
    shape = (batch, components.latent_channels, latent_size, latent_size)
    z = randn_tensor(shape, generator=list(generators), device=device, dtype=torch.float32)
    z = z * scheduler.init_noise_sigma
    targets = targets.to(device=device, dtype=torch.float32)
    cond, uncond = cond.to(device), uncond.to(device).expand_as(cond)
    steps = len(scheduler.timesteps)
    logs: list[dict[str, float]] = []
    intermediates: list[Intermediate] = []

    def guided_pass(
        z_t: torch.Tensor, t: torch.Tensor, abar: float, y: torch.Tensor, step: int, unet_grad: bool
    ):
        """``(eps, grad_{z_t} L)``; ``unet_grad``: whether ``eps`` is in the graph (else only ``x0_hat`` is)."""
        z_t = z_t.detach().requires_grad_(True)
        z_in = scheduler.scale_model_input(z_t, t)
        with torch.set_grad_enabled(unet_grad):
            eps = cfg_eps(components, z_in, t, cond, uncond, cfg_scale, abar)
        result = guide(predict_x0(z_in, eps, abar), z_t, y)
        if not math.isfinite(result.losses["total"]) or not torch.isfinite(result.grad).all():
            raise GuidanceError(
                f"non-finite guidance loss or gradient at step {step} of {steps} (timestep {float(t):g}): "
                f"losses {result.losses}; the batch is not saved"
            )
        logs.append({"step": step, "t": float(t), **result.losses})
        return eps.detach(), result.grad

    for i, t in enumerate(scheduler.timesteps):
        abar = alpha_bar(scheduler, i, t)
        active = guide is not None and guidance_active(guidance, i, steps)
        if active and guidance.mode in ("full", "detach_unet"):  # (1) the guidance update of z_t
            _, grad = guided_pass(z, t, abar, targets, i, unet_grad=guidance.mode == "full")
            z = z - guidance.step_size * grad
        mixed = False
        for aug in augmentations:  # (2) Latent CutMix, after the update, before the re-denoise
            if aug.applies(i, steps):
                z, targets = aug(z, targets, group_generators)
                mixed = True
        if active and guidance.mode == "one_pass":  # (3) eps at the current z_t, then the scheduler step
            eps, grad = guided_pass(z, t, abar, targets, i, unet_grad=True)
            eps = eps + math.sqrt(1.0 - abar) * guidance.step_size * grad
        else:
            with torch.no_grad():
                eps = cfg_eps(components, scheduler.scale_model_input(z, t), t, cond, uncond, cfg_scale, abar)
        if keep_intermediates and mixed:
            with torch.no_grad():
                x0 = predict_x0(scheduler.scale_model_input(z, t), eps, abar)
                intermediates.append(Intermediate(i, decode_latents(components, x0), targets.clone()))
        z = scheduler.step(eps, t, z, generator=list(generators)).prev_sample.detach()

    with torch.no_grad():
        images = decode_latents(components, z).clamp(0, 1)
    return SampleOutput(images, targets, z, intermediates, logs)
