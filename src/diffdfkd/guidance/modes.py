"""Guidance modes: objects that wrap the CFG denoiser (the k-diffusion pattern).

The sampling loop (``diffusion.sampler.sample``) asks a mode, at each step ``t``, for a latent update
``z_t <- update(z_t, t, y)`` and then, after the latent augmentations, for ``eps(z_t, t, y)``. With the
guide's ``grad_{z_t} L`` of the teacher loss on ``x0_hat(z_t)`` and step size ``eta``:

- ``none`` (``Unguided``): the plain CFG denoiser; ``z_t`` unchanged. One UNet pass per step.
- ``full`` (``FullGuidance``): ``z_t <- z_t - eta grad_{z_t} L`` with the gradient through the UNet's
  ``eps``, the VAE decoder and the teacher; then the plain ``eps`` at the updated ``z_t``. Two CFG UNet
  passes and one backward per guided step (the paper's method).
- ``detach_unet`` (``DetachedUNetGuidance``): the same update without the UNet's Jacobian:
  ``grad_{z_t} L = grad_{x0_hat} L / sqrt(abar_t)``. Two passes, a backward through decoder and teacher.
- ``one_pass`` (``OnePassGuidance``): ``z_t`` unchanged; ``eps' = eps + sqrt(1 - abar_t) eta grad_{z_t} L``
  (classifier guidance, Dhariwal & Nichol), which lowers ``L`` of ``x0_hat``. One pass plus a backward.

Step normalisation (``guidance.step_norm``). ``none``: the raw gradient above, so ``eta`` is in loss
units and its effect depends on the loss scale, the image size and the generator. ``sample``: each
image's gradient ``g_i`` is replaced by ``u_i = g_i / rms(g_i)`` (unit RMS over its latent), so ``eta``
is the shift in noise standard deviations: ``full``/``detach_unet`` move ``z_t`` by ``eta sigma_t u``
(``sigma_t = sqrt(1 - abar_t)``, ``z_t``'s own noise level; ``CFGDenoiser.noise_std``), ``one_pass`` moves ``eps``
(unit variance) by ``eta u``. One ``eta`` then means the same for any teacher, loss weights or generator.

A mode guides only at the steps its ``Window`` admits; elsewhere it is the plain denoiser. At a guided
step the loop takes the whole step ``repeats(step)`` times (``guidance.recurrence``; the re-noising
between the passes is the loop's, ``diffusion.sampler``). Every guided
pass refuses a loss that does not reach ``z_t`` (the guide raises) and a non-finite loss or gradient,
naming the step. Adding a mode is adding a class here (and to ``MODES``), with its test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffdfkd.config import GuidanceConfig
from diffdfkd.diffusion.denoiser import CFGDenoiser, Step
from diffdfkd.guidance.guide import GuidanceError, Guide


@dataclass(frozen=True)
class Window:
    """Guide at step ``i`` of ``N`` iff ``start <= i / N < end`` and ``i % every == 0``."""

    start: float = 0.0
    end: float = 1.0
    every: int = 1

    def __call__(self, step: Step) -> bool:
        return self.start <= step.index / step.count < self.end and step.index % self.every == 0


class Unguided:
    """Mode ``none``: the plain classifier-free guided denoiser, without gradients."""

    def __init__(self, denoiser: CFGDenoiser) -> None:
        self.denoiser = denoiser
        self.logs: list[dict[str, float]] = []

    def update(self, z: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor:
        return z

    def eps(self, z: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.denoiser(z, step)

    def repeats(self, step: Step) -> int:
        """How many times the loop takes this step (an unguided step once)."""
        return 1


def unit_rms(grad: torch.Tensor) -> torch.Tensor:
    """Each sample's ``grad [B, ...]`` scaled to unit root-mean-square (a zero gradient stays zero)."""
    rms = grad.flatten(1).pow(2).mean(dim=1).sqrt().clamp_min(1e-12)
    return grad / rms.view(-1, *([1] * (grad.dim() - 1)))


class _TeacherGuided(Unguided):
    """The shared guided pass of the teacher-guided modes; subclasses choose where its gradient goes."""

    unet_grad = True  # whether eps (and so the gradient) goes through the UNet

    def __init__(
        self,
        denoiser: CFGDenoiser,
        guide: Guide,
        step_size: float,
        window: Window,
        step_norm: str,
        recurrence: int = 1,
    ) -> None:
        super().__init__(denoiser)
        self.guide = guide
        self.step_size = step_size
        self.window = window
        self.normalised = step_norm == "sample"
        self.recurrence = recurrence

    def repeats(self, step: Step) -> int:
        """``recurrence`` times at a step the window guides, once elsewhere."""
        return self.recurrence if self.window(step) else 1

    def guided_pass(
        self, z: torch.Tensor, step: Step, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps, grad_{z_t} L)`` at ``z_t``; ``eps`` is detached. Logs the guide's named losses."""
        z_t = z.detach().requires_grad_(True)
        z_in = self.denoiser.model_input(z_t, step)
        with torch.set_grad_enabled(self.unet_grad):
            eps = self.denoiser.eps_at(z_in, step)
        result = self.guide(self.denoiser.x0_at(z_in, eps, step), z_t, targets)
        if not math.isfinite(result.losses["total"]) or not torch.isfinite(result.grad).all():
            raise GuidanceError(
                f"non-finite guidance loss or gradient at step {step.index} of {step.count} "
                f"(timestep {float(step.timestep):g}): losses {result.losses}; the batch is not saved (damaged "
                f"generator or teacher weights, or too large a guidance.step_size; finished batches are kept)"
            )
        self.logs.append({"step": step.index, "t": float(step.timestep), **result.losses})
        return eps.detach(), result.grad


class FullGuidance(_TeacherGuided):
    """Mode ``full``: ``z_t <- z_t - eta grad_{z_t} L``, the gradient through the UNet."""

    def update(self, z: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor:
        if not self.window(step):
            return z
        _, grad = self.guided_pass(z, step, targets)
        if self.normalised:
            return z - self.step_size * self.denoiser.noise_std(step) * unit_rms(grad)
        return z - self.step_size * grad


class DetachedUNetGuidance(FullGuidance):
    """Mode ``detach_unet``: as ``full``, with ``eps`` computed without gradients."""

    unet_grad = False


class OnePassGuidance(_TeacherGuided):
    """Mode ``one_pass``: ``eps' = eps + sqrt(1 - abar_t) eta grad_{z_t} L`` from one UNet pass."""

    def eps(self, z: torch.Tensor, step: Step, targets: torch.Tensor) -> torch.Tensor:
        if not self.window(step):
            return super().eps(z, step, targets)
        eps, grad = self.guided_pass(z, step, targets)
        if self.normalised:
            return eps + self.step_size * unit_rms(grad)
        return eps + math.sqrt(1.0 - step.abar) * self.step_size * grad


MODES: dict[str, type[_TeacherGuided]] = {
    "full": FullGuidance,
    "detach_unet": DetachedUNetGuidance,
    "one_pass": OnePassGuidance,
}
"""The teacher-guided modes by their ``guidance.mode`` name; ``none`` is ``Unguided``."""


def build_mode(guidance: GuidanceConfig, denoiser: CFGDenoiser, guide: Guide | None) -> Unguided:
    """The mode ``guidance.mode`` names, wrapping ``denoiser``; ``guide`` is needed unless it is ``none``."""
    if guidance.mode == "none":
        return Unguided(denoiser)
    if guidance.mode not in MODES:
        raise ValueError(f"unknown guidance mode {guidance.mode!r}; known: none, {', '.join(MODES)}")
    if guide is None:
        raise ValueError(f"guidance mode {guidance.mode!r} needs a guide")
    return MODES[guidance.mode](
        denoiser, guide, guidance.step_size, window_of(guidance), guidance.step_norm, guidance.recurrence
    )


def window_of(guidance: GuidanceConfig) -> Window:
    """The steps ``guidance`` guides at (all of them are unguided in mode ``none``)."""
    return Window(guidance.window_start, guidance.window_end, guidance.every)


def guided_steps(guidance: GuidanceConfig, num_steps: int) -> int:
    """How many steps of an ``num_steps``-step schedule the configured mode guides."""
    if guidance.mode == "none":
        return 0
    window = window_of(guidance)
    return sum(window(Step(i, num_steps, torch.tensor(0), 1.0)) for i in range(num_steps))
