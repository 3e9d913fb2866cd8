"""Guidance modes as objects around the CFG denoiser: the window, the table, and a new mode as a class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffdfkd.config import GuidanceConfig
from diffdfkd.diffusion.components import encode_prompts
from diffdfkd.diffusion.denoiser import CFGDenoiser, Step
from diffdfkd.diffusion.sampler import sample
from diffdfkd.guidance.modes import MODES, Unguided, Window, build_mode
from diffdfkd.runtime import generators_for

TARGETS = F.one_hot(torch.tensor([0, 1]), 3).float()


def denoiser(components) -> CFGDenoiser:
    cond = encode_prompts(components, ["a handwritten digit"]).expand(2, -1, -1)
    return CFGDenoiser(components, cond, encode_prompts(components, [""]), cfg_scale=2.0)


def run(components, mode):
    return sample(
        components, mode, targets=TARGETS, generators=generators_for([0, 1]), latent_size=8, num_steps=4
    )


def test_window_admits_its_fraction_of_the_schedule_and_every_kth_step() -> None:
    admitted = lambda w: [i for i in range(10) if w(Step(i, 10, torch.tensor(0), 0.5))]  # noqa: E731
    assert admitted(Window()) == list(range(10))
    assert admitted(Window(0.2, 0.6)) == [2, 3, 4, 5]
    assert admitted(Window(every=3)) == [0, 3, 6, 9]


def test_build_mode_names_the_known_modes_and_needs_a_guide(tiny_components) -> None:
    d = denoiser(tiny_components)
    assert type(build_mode(GuidanceConfig(mode="none"), d, None)) is Unguided
    for name, cls in MODES.items():
        assert type(build_mode(GuidanceConfig(mode=name), d, lambda *a: None)) is cls
        with pytest.raises(ValueError, match="needs a guide"):
            build_mode(GuidanceConfig(mode=name), d, None)


def test_a_new_mode_is_a_class_the_loop_calls_at_every_step(tiny_components) -> None:
    """The loop knows no mode names: any object with update/eps/logs is a mode."""

    class Recording(Unguided):
        def __init__(self, d: CFGDenoiser) -> None:
            super().__init__(d)
            self.seen: list[tuple[str, int]] = []

        def update(self, z, step, targets):
            self.seen.append(("update", step.index))
            return z

        def eps(self, z, step, targets):
            self.seen.append(("eps", step.index))
            return super().eps(z, step, targets)

    recording = Recording(denoiser(tiny_components))
    out = run(tiny_components, recording)
    assert recording.seen == [(kind, i) for i in range(4) for kind in ("update", "eps")]
    plain = run(tiny_components, Unguided(denoiser(tiny_components)))
    assert torch.equal(out.images, plain.images) and out.logs == []


class ScaledGuide:
    """A guide whose loss is ``scale * sum(z)``: its gradient is ``scale`` everywhere."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, x0_hat, z, targets):
        from diffdfkd.guidance.guide import GuideOutput

        return GuideOutput(grad=torch.full_like(z, self.scale) * (1 + torch.arange(len(z))).view(-1, 1, 1, 1),
                           losses={"total": 0.0})  # fmt: skip


@pytest.mark.parametrize("name", ["full", "one_pass"])
def test_a_normalised_step_does_not_depend_on_the_loss_scale(tiny_components, name) -> None:
    """``step_norm=sample``: the same images for a loss x1 and x1000; raw steps differ (the scale leaks)."""

    def images(scale: float, step_norm: str) -> torch.Tensor:
        config = GuidanceConfig(mode=name, step_size=0.5, step_norm=step_norm)
        return run(tiny_components, build_mode(config, denoiser(tiny_components), ScaledGuide(scale))).images

    assert torch.allclose(images(1.0, "sample"), images(1000.0, "sample"), atol=1e-5)
    assert not torch.allclose(images(0.2, "none"), images(2e-4, "none"), atol=1e-3)


def test_a_normalised_full_step_moves_each_latent_by_step_size_noise_levels(tiny_components) -> None:
    d = denoiser(tiny_components)
    mode = build_mode(GuidanceConfig(step_size=0.3, step_norm="sample"), d, ScaledGuide(7.0))
    step = Step(0, 4, torch.tensor(999), 0.19)
    z = torch.randn(2, 4, 8, 8)
    shift = (z - mode.update(z, step, TARGETS)).flatten(1)
    expected = 0.3 * d.noise_std(step)
    assert d.noise_std(step) == pytest.approx(0.9)
    assert torch.allclose(shift.pow(2).mean(dim=1).sqrt(), torch.full((2,), expected), rtol=1e-5)
