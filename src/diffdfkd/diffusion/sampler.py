"""THE sampling loop: a guidance mode wrapping the CFG denoiser, latent augmentations, the scheduler.

The loop knows nothing of the teacher or of which guidance mode runs: it asks the mode for a latent
update and for ``eps``. Per step ``t`` (schedule of ``N`` steps):

1. ``z_t <- mode.update(z_t, t, y)``: the guidance update of the latents (``z_t - eta grad_{z_t} L`` in
   the modes that update them; ``z_t`` unchanged otherwise);
2. the augmentations that apply at this step (Latent CutMix at N/5 .. 4N/5): ``z_t, y <- aug(z_t, y)``;
3. ``eps <- mode.eps(z_t, t, y)`` at the (updated) ``z_t`` (plain CFG, or corrected by one-pass guidance);
   then ``z_{t-1} = scheduler.step(eps, t, z_t, generator=<per-sample generators>)``;
4. recurrence (``mode.repeats(t) = k > 1``, Universal Guidance's self-recurrence, Bansal et al. 2023):
   ``z_t <- sqrt(a) z_{t-1} + sqrt(1 - a) noise`` with ``a = abar_t / abar_{t-1}`` (the forward process
   from ``t-1`` back to ``t``), then (1) and (3) again; ``k`` passes in all, the augmentations only in
   the first.

The modes (``diffdfkd.guidance.modes``) and the CFG denoiser they wrap (``diffusion.denoiser``) state
their own equations and costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffdfkd.diffusion.components import DiffusionComponents, decode_latents
from diffdfkd.diffusion.denoiser import Step, alpha_bar, predict_x0


class GuidanceMode(Protocol):
    """What the loop asks of a guidance mode (``diffdfkd.guidance.modes``): a latent update, then ``eps``.

    ``update(z [B, C, h, w], step, targets [B, K]) -> z``; ``eps(z, step, targets) -> eps [B, C, h, w]``;
    ``logs``: one dict of named losses per guided pass, in order.
    """

    logs: list[dict[str, float]]

    def update(self, z: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor: ...

    def eps(self, z: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor: ...


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


def sample(
    components: DiffusionComponents,
    mode: GuidanceMode,
    *,
    targets: torch.Tensor,
    generators: Sequence[torch.Generator],
    group_generators: Sequence[torch.Generator] = (),
    latent_size: int,
    num_steps: int,
    augmentations: Sequence[Augmentation] = (),
    keep_intermediates: bool = False,
) -> SampleOutput:
    """Sample ``B`` images: ``mode`` (wrapping the CFG denoiser) at every step, then the augmentations.

    ``targets [B, K]``: one-hot or soft, handed to the mode and the augmentations; ``generators``: one
    CPU generator per sample (its ``z_T`` and all its sampler noise); ``group_generators``: one per mixing
    group, for the augmentations; ``latent_size``: side ``h = w``; ``keep_intermediates``: also decode
    ``x0_hat`` after each augmentation step.
    """
    batch = targets.shape[0]
    if len(generators) != batch:
        raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {batch}")
    scheduler = components.scheduler
    scheduler.set_timesteps(num_steps, device=components.device)
    shape = (batch, components.latent_channels, latent_size, latent_size)
    z = randn_tensor(shape, generator=list(generators), device=components.device, dtype=torch.float32)
    z = z * scheduler.init_noise_sigma
    targets = targets.to(device=components.device, dtype=torch.float32)
    steps = len(scheduler.timesteps)
    intermediates: list[Intermediate] = []
    for i, t in enumerate(scheduler.timesteps):
        step = Step(i, steps, t, alpha_bar(scheduler, i, t))
        for take in range(mode.repeats(step)):
            if take:  # (4) recurrence: back from z_{t-1} to z_t by the forward process
                z = renoise(z, step.abar / abar_after(scheduler, t), generators)
            z = mode.update(z, step, targets)  # (1) the guidance update of z_t
            mixed = False
            for aug in augmentations:  # (2) Latent CutMix, before the re-denoise (first pass only)
                if aug.applies(i, steps) and not take:
                    z, targets = aug(z, targets, group_generators)
                    mixed = True
            eps = mode.eps(z, step, targets)  # (3) eps at the current z_t, then the scheduler step
            if keep_intermediates and mixed:
                with torch.no_grad():
                    x0 = predict_x0(scheduler.scale_model_input(z, t), eps, step.abar)
                    intermediates.append(Intermediate(i, decode_latents(components, x0), targets.clone()))
            z = scheduler.step(eps, t, z, generator=list(generators)).prev_sample.detach()
    with torch.no_grad():
        images = decode_latents(components, z).clamp(0, 1)
    return SampleOutput(images, targets, z, intermediates, list(mode.logs))


def abar_after(scheduler: object, timestep: torch.Tensor) -> float:
    """``abar_{t-1}``: that of the timestep a DDPM or DDIM step from ``timestep`` lands on (1 or the
    scheduler's final value after the last step); the schedulers ``guidance.recurrence`` supports."""
    if hasattr(scheduler, "previous_timestep"):  # DDPM: the next timestep of its schedule
        prev, final = int(scheduler.previous_timestep(timestep)), 1.0
    else:  # DDIM: a fixed stride
        prev = int(timestep) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        final = float(scheduler.final_alpha_cumprod)
    return float(scheduler.alphas_cumprod[prev]) if prev >= 0 else final


def renoise(z: torch.Tensor, ratio: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``sqrt(ratio) z + sqrt(1 - ratio) noise``: the forward process over a step whose signal fraction
    is ``ratio = abar_t / abar_{t-1}``; the noise is drawn from each sample's own generator."""
    noise = randn_tensor(z.shape, generator=list(generators), device=z.device, dtype=z.dtype)
    return math.sqrt(ratio) * z + math.sqrt(1.0 - ratio) * noise
