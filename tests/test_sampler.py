"""Loading pipeline folders and the sampling loop: schedulers, work per step, x0_hat, intermediates."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from diffdfkd.augment.cutmix import LatentCutMix
from diffdfkd.config import GuidanceConfig
from diffdfkd.diffusion import denoiser as denoiser_module
from diffdfkd.diffusion.components import (
    SCHEDULER_CLASSES,
    ComponentsError,
    build_scheduler,
    decode_latents,
    encode_prompts,
    load_components,
)
from diffdfkd.diffusion.denoiser import CFGDenoiser, alpha_bar, cfg_eps, predict_x0
from diffdfkd.diffusion.sampler import abar_after, renoise, sample
from diffdfkd.guidance.guide import TeacherGuide
from diffdfkd.guidance.modes import build_mode
from diffdfkd.runtime import SettingError, generators_for

BATCH = 4
BF16_TOLERANCE = 0.05  # max pixel difference (in [0, 1]) of 2 guided bf16 steps from fp32
TARGETS = F.one_hot(torch.tensor([0, 0, 1, 1]), 3).float()


def run(components, teacher=None, *, mode="none", steps=3, augmentations=(), keep=False, **guidance):
    guide = None
    if mode != "none":
        guide = TeacherGuide(teacher, lambda x0: decode_latents(components, x0), group_size=BATCH)
    cond = encode_prompts(components, ["a handwritten digit"]).expand(BATCH, -1, -1)
    denoiser = CFGDenoiser(components, cond, encode_prompts(components, [""]), cfg_scale=2.0)
    return sample(
        components,
        build_mode(
            GuidanceConfig(**{"mode": mode, "step_size": 5.0, "step_norm": "none", **guidance}),
            denoiser,
            guide,
        ),
        targets=TARGETS,
        generators=generators_for(list(range(BATCH))),
        group_generators=generators_for([99]),
        latent_size=8,
        num_steps=steps,
        augmentations=augmentations,
        keep_intermediates=keep,
    )


def test_load_components_errors_name_the_problem(tiny_pipeline_dir, tmp_path) -> None:
    with pytest.raises(ComponentsError, match="model_index.json"):
        load_components(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ComponentsError, match="lacks the part"):
        load_components(broken)
    with pytest.raises(ComponentsError, match="supported: ddpm"):
        load_components(tiny_pipeline_dir, scheduler="pndm")
    with pytest.raises(SettingError, match="choose from fp32"):
        load_components(tiny_pipeline_dir, dtype="fp8")


def test_components_shapes(tiny_components) -> None:
    assert tiny_components.native_resolution == 32 and tiny_components.vae_scale_factor == 4
    embeds = encode_prompts(tiny_components, ["a handwritten digit", ""])
    assert embeds.shape == (2, 8, 32)


def test_decode_maps_the_vae_to_unit_range_with_a_straight_through_clamp(tiny_components) -> None:
    """``clamp(D(x0 / s) / 2 + 1/2, 0, 1)``, whose gradient passes the clamp (saturated pixels still learn)."""
    vae = tiny_components.vae
    latents = (4 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    images = decode_latents(tiny_components, latents)
    raw = vae.decode(latents / vae.config.scaling_factor).sample.float() / 2 + 0.5
    assert images.shape == (2, 3, 32, 32)
    assert torch.allclose(images, raw.clamp(0, 1), atol=1e-6)
    weights = torch.randn(raw.shape, generator=torch.Generator().manual_seed(1))
    (through_clamp,) = torch.autograd.grad((images * weights).sum(), latents)
    (unclamped,) = torch.autograd.grad((raw * weights).sum(), latents)
    assert ((raw < 0) | (raw > 1)).any(), "some pixels saturate, so the check below means something"
    assert torch.allclose(through_clamp, unclamped, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(SCHEDULER_CLASSES))
def test_under_every_scheduler_guidance_and_cutmix_reach_the_images(
    tiny_components, tiny_pipeline_dir, tiny_teacher, name
):
    scheduler, _ = build_scheduler(tiny_pipeline_dir, name)
    components = dataclasses.replace(tiny_components, scheduler=scheduler)
    out = run(components, tiny_teacher, mode="full", augmentations=[LatentCutMix()])
    assert out.images.shape == (BATCH, 3, 32, 32) and torch.isfinite(out.images).all()
    assert len(out.logs) == 3 and all(math.isfinite(log["total"]) for log in out.logs)
    again = run(components, tiny_teacher, mode="full", augmentations=[LatentCutMix()])
    assert torch.equal(out.images, again.images), "the same generators give the same images"
    assert not torch.equal(out.images[0], out.images[1]), "each sample has its own noise"
    # Under every scheduler the guidance step and the CutMix each reach the images of the same seeds.
    unguided = run(components).images
    guided = run(components, tiny_teacher, mode="full").images
    assert (unguided - guided).abs().flatten(1).amax(dim=1).min() > 1e-4, "every sample is guided"
    assert (guided - out.images).abs().max() > 1e-4, "the boxes are mixed"


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m"])
def test_x0_hat_matches_the_schedulers_own_prediction(tiny_pipeline_dir, name) -> None:
    scheduler, _ = build_scheduler(tiny_pipeline_dir, name)
    scheduler.set_timesteps(4)
    z = torch.randn(2, 4, 8, 8) * scheduler.init_noise_sigma
    eps = torch.randn(2, 4, 8, 8)
    for i, t in enumerate(scheduler.timesteps[:2]):
        ours = predict_x0(scheduler.scale_model_input(z, t), eps, alpha_bar(scheduler, i, t))
        step = scheduler.step(eps, t, z, generator=torch.Generator().manual_seed(0))
        if hasattr(step, "pred_original_sample") and step.pred_original_sample is not None:
            assert torch.allclose(ours, step.pred_original_sample, atol=1e-4)
        else:  # DPM-Solver keeps its x0 in its own state
            assert torch.allclose(ours, scheduler.model_outputs[-1], atol=1e-4)
        z = step.prev_sample


def test_v_prediction_output_is_converted_to_epsilon(tiny_components) -> None:
    abar = 0.3
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    z = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    v = math.sqrt(abar) * eps - math.sqrt(1 - abar) * x0

    def fake_unet(latents, timestep, encoder_hidden_states):
        return SimpleNamespace(sample=v.repeat(latents.shape[0] // 2, 1, 1, 1))

    components = dataclasses.replace(tiny_components, unet=fake_unet, prediction_type="v_prediction")
    cond = torch.zeros(2, 8, 32)
    out = cfg_eps(components, z, torch.tensor(500), cond, cond, 3.0, abar)
    assert torch.allclose(out, eps, atol=1e-5)
    assert torch.allclose(predict_x0(z, out, abar), x0, atol=1e-5)


@pytest.mark.parametrize(
    ("mode", "extra", "grad_calls", "plain_calls"),
    [
        ("none", {}, 0, 4),
        ("full", {}, 4, 4),  # a guided pass and the re-denoise per step, nothing else
        ("detach_unet", {}, 0, 8),
        ("one_pass", {}, 4, 0),
        ("full", {"window_start": 0.5}, 2, 4),  # guided at steps 2, 3
        ("full", {"every": 2}, 2, 4),  # guided at steps 0, 2
        ("full", {"recurrence": 2}, 8, 8),  # every step taken twice
        ("full", {"recurrence": 3, "window_start": 0.5}, 6, 8),  # steps 0, 1 once; 2, 3 three times
        ("one_pass", {"recurrence": 2}, 8, 0),
    ],
)
def test_unet_passes_per_step(
    tiny_components, tiny_teacher, monkeypatch, mode, extra, grad_calls, plain_calls
):
    calls = []
    real = denoiser_module.cfg_eps

    def counting(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(denoiser_module, "cfg_eps", counting)
    run(tiny_components, tiny_teacher, mode=mode, steps=4, **extra)
    assert (sum(calls), len(calls) - sum(calls)) == (grad_calls, plain_calls)


def test_intermediates_are_kept_at_cutmix_steps(tiny_components, tiny_teacher) -> None:
    out = run(tiny_components, tiny_teacher, mode="full", steps=5, augmentations=[LatentCutMix()], keep=True)
    assert [m.step for m in out.intermediates] == [1, 2, 3, 4]
    for m in out.intermediates:
        assert m.images.shape == (BATCH, 3, 32, 32) and m.targets.shape == (BATCH, 3)
    assert len(out.logs) == 5


def test_bf16_autocast_on_cpu_keeps_fp32_weights_and_the_fp32_images(
    tiny_pipeline_dir, tiny_components, tiny_teacher
) -> None:
    components = load_components(tiny_pipeline_dir, dtype="bf16")
    assert next(components.unet.parameters()).dtype == torch.float32
    out = run(components, tiny_teacher, mode="full", steps=2)
    reference = run(tiny_components, tiny_teacher, mode="full", steps=2)
    assert out.images.dtype == torch.float32
    assert not torch.equal(out.images, reference.images), "bf16 compute really ran"
    assert (out.images - reference.images).abs().max() < BF16_TOLERANCE


def test_a_folder_saved_in_fp16_loads_in_fp32_on_cpu_with_its_values_and_no_cast_warning(
    tiny_pipeline_dir, tiny_components, tmp_path
) -> None:
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "fp16"
    StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float16).save_pretrained(
        folder
    )
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append  # diffusers' loggers do not propagate to the root logger
    logging.getLogger("diffusers").addHandler(handler)
    try:
        components = load_components(folder, device="cpu", dtype="fp32")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert [r.getMessage() for r in warnings if "Casting directly" in r.getMessage()] == []
    for part in ("unet", "vae", "text_encoder"):
        loaded = getattr(components, part).state_dict()
        for name, original in getattr(tiny_components, part).state_dict().items():
            assert loaded[name].dtype == original.dtype
            if original.is_floating_point():
                assert torch.equal(loaded[name], original.half().float()), (part, name)


def test_v_prediction_folder_is_read(tiny_pipeline_dir, tmp_path) -> None:
    folder = tmp_path / "v"
    shutil.copytree(tiny_pipeline_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    scheduler, prediction_type = build_scheduler(folder, "ddim")
    assert prediction_type == "v_prediction" and scheduler.config.prediction_type == "epsilon"


def test_gradient_checkpointing_gives_the_same_images(
    tiny_pipeline_dir, tiny_components, tiny_teacher
) -> None:
    checkpointed = load_components(tiny_pipeline_dir, gradient_checkpointing=True)
    plain = run(tiny_components, tiny_teacher, mode="full", steps=2)
    recomputed = run(checkpointed, tiny_teacher, mode="full", steps=2)
    assert torch.allclose(plain.images, recomputed.images, atol=1e-5)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_abar_after_is_that_of_the_timestep_the_step_lands_on(tiny_pipeline_dir, name) -> None:
    scheduler, _ = build_scheduler(tiny_pipeline_dir, name)
    scheduler.set_timesteps(5)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps[:-1]):
        assert abar_after(scheduler, t) == alpha_bar(scheduler, i + 1, timesteps[i + 1])
    assert abar_after(scheduler, timesteps[-1]) == pytest.approx(
        1.0 if name == "ddpm" else float(scheduler.final_alpha_cumprod)
    )


def test_renoise_is_the_forward_process_from_t_minus_1_back_to_t() -> None:
    # z_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) e; re-noised, it must be distributed as z_t:
    # mean sqrt(abar_t) x0, standard deviation sqrt(1 - abar_t).
    abar_prev, abar_t = 0.8, 0.5
    x0 = torch.full((4000, 1, 4, 4), 0.7)
    z_prev = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * torch.randn(x0.shape)
    z_t = renoise(z_prev, abar_t / abar_prev, generators_for(list(range(4000))))
    assert z_t.mean().item() == pytest.approx(math.sqrt(abar_t) * 0.7, abs=0.01)
    assert z_t.std().item() == pytest.approx(math.sqrt(1 - abar_t), abs=0.01)
    again = renoise(z_prev, abar_t / abar_prev, generators_for(list(range(4000))))
    assert torch.equal(z_t, again), "the noise comes from each sample's own generator"


def test_recurrence_redoes_each_guided_step_and_is_repeatable(tiny_components, tiny_teacher) -> None:
    once = run(tiny_components, tiny_teacher, mode="full", augmentations=[LatentCutMix()])
    twice = run(tiny_components, tiny_teacher, mode="full", recurrence=2, augmentations=[LatentCutMix()])
    assert [log["step"] for log in twice.logs] == [0, 0, 1, 1, 2, 2], "two guided passes per step"
    assert (once.images - twice.images).abs().max() > 1e-4, "the repeated passes change the images"
    again = run(tiny_components, tiny_teacher, mode="full", recurrence=2, augmentations=[LatentCutMix()])
    assert torch.equal(twice.images, again.images), "the re-noising draws from the per-sample generators"
