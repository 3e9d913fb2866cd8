"""The model function the sampling loop and the guidance modes call: classifier-free guided ``eps(z_t, t)``.

Per step of a schedule of ``N`` steps (``Step``: index ``i``, timestep ``t``, ``abar_t`` the cumulative
signal fraction of the model input):

    eps = eps_u + s (eps_c - eps_u)                        (classifier-free guidance, scale s)
    x0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (DDPM eq. 15, on the scaled model input)

A v-predicting UNet's output is converted to ``eps``. Guidance modes (``diffdfkd.guidance.modes``)
wrap a ``CFGDenoiser``; the denoiser knows nothing of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffdfkd.diffusion.components import DiffusionComponents


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


@dataclass(frozen=True)
class Step:
    """Step ``index`` of ``count`` at scheduler ``timestep``, with ``abar`` (see ``alpha_bar``)."""

    index: int
    count: int
    timestep: torch.Tensor
    abar: float


class CFGDenoiser:
    """``eps(z_t, step)`` with classifier-free guidance, for one batch's conditioning.

    ``cond [B, L, D]`` and ``uncond [1 or B, L, D]`` are the prompt and negative-prompt embeddings.
    Gradients flow through the UNet when grad mode is on (the caller decides).
    """

    def __init__(
        self, components: DiffusionComponents, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float
    ) -> None:
        self.components = components
        self.cond = cond.to(components.device)
        self.uncond = uncond.to(components.device).expand_as(self.cond)
        self.cfg_scale = cfg_scale

    def model_input(self, z_t: torch.Tensor, step: Step) -> torch.Tensor:
        """The scheduler's scaled model input (identity for variance-preserving schedulers)."""
        return self.components.scheduler.scale_model_input(z_t, step.timestep)

    def noise_std(self, step: Step) -> float:
        """The noise level of ``z_t`` itself: ``sqrt(1 - abar_t)`` (variance preserving) or ``sigma_t``."""
        if float(self.components.scheduler.init_noise_sigma) == 1.0:
            return math.sqrt(1.0 - step.abar)
        return math.sqrt((1.0 - step.abar) / step.abar)

    def __call__(self, z_t: torch.Tensor, step: Step) -> torch.Tensor:
        """``eps [B, C, h, w]`` (fp32) at latents ``z_t [B, C, h, w]``."""
        return self.eps_at(self.model_input(z_t, step), step)

    def eps_at(self, z_in: torch.Tensor, step: Step) -> torch.Tensor:
        """``eps`` at an already scaled model input ``z_in``."""
        return cfg_eps(
            self.components, z_in, step.timestep, self.cond, self.uncond, self.cfg_scale, step.abar
        )

    def x0_at(self, z_in: torch.Tensor, eps: torch.Tensor, step: Step) -> torch.Tensor:
        """``x0_hat`` of a scaled model input ``z_in`` and its ``eps``, differentiable in both."""
        return predict_x0(z_in, eps, step.abar)
