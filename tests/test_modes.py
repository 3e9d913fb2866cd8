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
