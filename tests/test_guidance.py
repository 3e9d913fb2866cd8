"""Teacher guidance: the losses, and that guidance really raises the teacher's target-class probability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffdfkd.config import GuidanceConfig
from diffdfkd.diffusion import denoiser as denoiser_module
from diffdfkd.diffusion.components import decode_latents, encode_prompts
from diffdfkd.diffusion.denoiser import CFGDenoiser
from diffdfkd.diffusion.sampler import sample
from diffdfkd.guidance.guide import GuidanceError, GuideOutput, TeacherGuide
from diffdfkd.guidance.modes import build_mode
from diffdfkd.guidance.teacher_loss import BNStatistics, Units
from diffdfkd.runtime import generators_for

BATCH = 6  # three classes, two samples each: [0, 0, 1, 1, 2, 2]
TARGETS = F.one_hot(torch.arange(BATCH) // 2 % 3, 3).float()


def test_guide_with_adversarial_term_needs_a_student(tiny_teacher) -> None:
    decode = lambda x0: torch.sigmoid(x0[:, :3].repeat_interleave(4, 2).repeat_interleave(4, 3))  # noqa: E731
    with pytest.raises(ValueError, match="student"):
        TeacherGuide(tiny_teacher, decode, group_size=2, adv_weight=1.0)
    student = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    guide = TeacherGuide(tiny_teacher, decode, group_size=2, adv_weight=1.0, student=student)
    z = torch.randn(BATCH, 4, 8, 8, requires_grad=True)
    out = guide(z * 1.0, z, TARGETS)
    assert {"ce", "bn", "adv", "total", "p_target"} <= set(out.losses)
    assert out.grad.shape == z.shape and torch.isfinite(out.grad).all()


def test_guided_steps_lower_the_bn_loss(tiny_components, tiny_teacher) -> None:
    """Gradient steps on fixed latents through the VAE decoder and teacher lower L_bn."""
    guide = TeacherGuide(
        tiny_teacher,
        lambda x0: decode_latents(tiny_components, x0),
        group_size=2,
        ce_weight=0.0,
        bn_weight=1.0,
    )
    z = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    history = []
    for _ in range(6):
        leaf = z.requires_grad_(True)
        out = guide(leaf, leaf, TARGETS)
        history.append(out.losses["bn"])
        z = (leaf - 200.0 * out.grad).detach()
    assert all(b < a for a, b in zip(history, history[1:], strict=False)), history
    assert history[-1] < 0.99 * history[0], history


def test_a_samples_gradient_depends_only_on_its_own_group(tiny_components, tiny_teacher) -> None:
    guide = TeacherGuide(tiny_teacher, lambda x0: decode_latents(tiny_components, x0), group_size=2)
    z = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    full = guide(z * 1.0, z, TARGETS).grad
    z2 = z.detach()[:2].clone().requires_grad_(True)
    alone = guide(z2 * 1.0, z2, TARGETS[:2]).grad
    assert torch.allclose(full[:2], alone, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Guidance inside the sampling loop.


@pytest.fixture(scope="module")
def sharp_teacher(make_teacher):
    """A random teacher with larger logits, so that its probabilities respond to its input."""
    teacher = make_teacher()
    with torch.no_grad():
        teacher.model.classifier[-1].weight.mul_(30.0)
    return teacher


def run(
    components,
    teacher,
    mode: str,
    *,
    step_size: float = 10.0,
    step_norm: str = "none",
    guide=None,
    steps: int = 3,
    seed: int = 0,
):
    """Sample BATCH images at fixed seeds; return (output, mean teacher target-class probability)."""
    guidance = GuidanceConfig(mode=mode, step_size=step_size, step_norm=step_norm)
    if guide is None and mode != "none":
        guide = TeacherGuide(teacher, lambda x0: decode_latents(components, x0), group_size=BATCH)
    cond = encode_prompts(components, ["a handwritten digit"]).expand(BATCH, -1, -1)
    denoiser = CFGDenoiser(components, cond, encode_prompts(components, [""]), cfg_scale=2.0)
    out = sample(
        components,
        build_mode(guidance, denoiser, guide),
        targets=TARGETS,
        generators=generators_for([seed * 1000 + i for i in range(BATCH)]),
        latent_size=8,
        num_steps=steps,
    )
    with torch.no_grad():
        p_target = (teacher(out.images).softmax(dim=1) * TARGETS).sum(dim=1).mean().item()
    return out, p_target


@pytest.fixture(scope="module")
def unguided(tiny_components, sharp_teacher):
    return run(tiny_components, sharp_teacher, "none")


@pytest.mark.parametrize("mode", ["full", "detach_unet", "one_pass"])
def test_guidance_raises_target_class_probability(tiny_components, sharp_teacher, unguided, mode) -> None:
    _, p_none = unguided
    out, p_guided = run(tiny_components, sharp_teacher, mode)
    assert p_guided > p_none + 0.02, f"{mode}: {p_guided:.4f} vs unguided {p_none:.4f}"
    assert len(out.logs) == 3 and all(math.isfinite(log["total"]) for log in out.logs)


@pytest.mark.parametrize("mode", ["full", "one_pass"])
def test_the_default_step_visibly_moves_a_foreign_pipeline(
    tiny_components, sharp_teacher, unguided, mode
) -> None:
    """The library's default step (normalised, 0.1 noise levels) moves a random tiny pipeline and teacher
    it was never tuned on; the raw step of the same size in loss units barely does."""
    default = GuidanceConfig()
    _, p_none = unguided
    _, p_default = run(
        tiny_components, sharp_teacher, mode, step_size=default.step_size, step_norm=default.step_norm
    )
    _, p_raw = run(tiny_components, sharp_teacher, mode, step_size=default.step_size, step_norm="none")
    assert p_default > p_none + 0.02, f"{mode}: {p_default:.4f} vs unguided {p_none:.4f}"
    assert abs(p_raw - p_none) < (p_default - p_none) / 4


def test_a_zero_gradient_gives_exactly_the_unguided_images(tiny_components, sharp_teacher, unguided) -> None:
    """What the reference code did (guidance without effect) is what the test above rejects."""
    real = TeacherGuide(sharp_teacher, lambda x0: decode_latents(tiny_components, x0), group_size=BATCH)

    def no_effect(x0_hat, z, targets):
        out = real(x0_hat, z, targets)
        return GuideOutput(torch.zeros_like(out.grad), out.losses)

    out, p_target = run(tiny_components, sharp_teacher, "full", guide=no_effect)
    assert torch.allclose(out.images, unguided[0].images, atol=1e-6)
    assert p_target == pytest.approx(unguided[1], abs=1e-6)


@pytest.mark.parametrize("cut", ["no_grad", "detach"])
def test_cutting_the_gradient_path_is_an_error(tiny_components, sharp_teacher, monkeypatch, cut) -> None:
    """The reference computed x0_hat under no_grad, so its guidance did nothing: we refuse to run so."""
    real = denoiser_module.predict_x0

    def cut_x0(z_in, eps, abar):
        if cut == "no_grad":
            with torch.no_grad():
                return real(z_in, eps, abar)
        return real(z_in, eps, abar).detach().requires_grad_(True)

    monkeypatch.setattr(denoiser_module, "predict_x0", cut_x0)
    with pytest.raises(GuidanceError, match="z_t"):
        run(tiny_components, sharp_teacher, "full")


def test_full_mode_differentiates_through_the_unet(tiny_components, sharp_teacher) -> None:
    """detach_unet's gradient is grad_x0 / sqrt(abar); full's adds the UNet's Jacobian term."""
    grads = {}

    def recording(mode):
        real = TeacherGuide(sharp_teacher, lambda x0: decode_latents(tiny_components, x0), group_size=BATCH)

        def guide(x0_hat, z, targets):
            out = real(x0_hat, z, targets)
            (grad_x0,) = torch.autograd.grad(real.loss(x0_hat, targets)[0], x0_hat)
            grads.setdefault(mode, (out.grad, grad_x0))
            return out

        return guide

    for mode in ("full", "detach_unet"):
        run(tiny_components, sharp_teacher, mode, guide=recording(mode), steps=2)
    abar = float(tiny_components.scheduler.alphas_cumprod[tiny_components.scheduler.timesteps[0]])
    grad_detached, grad_x0 = grads["detach_unet"]
    assert torch.allclose(grad_detached, grad_x0 / math.sqrt(abar), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads["full"][0], grad_detached, rtol=1e-3, atol=1e-7)


def test_non_finite_gradient_names_the_step(tiny_components, sharp_teacher) -> None:
    real = TeacherGuide(sharp_teacher, lambda x0: decode_latents(tiny_components, x0), group_size=BATCH)
    calls = []

    def breaks_at_second_step(x0_hat, z, targets):
        out = real(x0_hat, z, targets)
        calls.append(1)
        if len(calls) == 2:
            out.grad[0, 0, 0, 0] = float("nan")
        return out

    with pytest.raises(GuidanceError, match="step 1 of 3"):
        run(tiny_components, sharp_teacher, "full", guide=breaks_at_second_step)


def test_the_guide_takes_bn_statistics_per_group_or_per_sample(tiny_teacher) -> None:
    """``bn_per``: one distance per mixing group (default) or per image (the paper's batch of one)."""
    decode = lambda x0: torch.sigmoid(x0[:, :3].repeat_interleave(4, 2).repeat_interleave(4, 3))  # noqa: E731
    z = torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    values = {}
    for per in ("group", "sample"):
        guide = TeacherGuide(tiny_teacher, decode, group_size=2, bn_per=per)
        values[per] = guide.loss(z, TARGETS)[1]["bn"]
        with BNStatistics(tiny_teacher.model, Units(per, 2 if per == "group" else 1)) as bn:
            tiny_teacher(decode(z))
            assert values[per] == pytest.approx(bn.loss().item(), rel=1e-6)
    assert values["sample"] != pytest.approx(values["group"], rel=1e-3)
