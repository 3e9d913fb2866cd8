"""The tiny guidance decoder: the gradient goes through it, the saved image through the full VAE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders import vae as vae_blocks

from diffdfkd.diffusion.components import ComponentsError, guidance_decoder_folder, load_guidance_decoder
from diffdfkd.models.teacher import build_teacher
from diffdfkd.synth.diffusion_source import DiffusionSource
from diffdfkd.synth.run import SynthPlan
from diffdfkd.worlds import teacher_spec
from diffdfkd.worlds.tiny_decoder import QUICK, make_tiny_autoencoder, train_tiny_decoder


@pytest.fixture(scope="module")
def tiny_decoder_dir(tiny_components, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae_tiny")
    make_tiny_autoencoder(tiny_components.vae, QUICK).save_pretrained(path)
    return path


def _count_calls(monkeypatch, cls: type) -> list[int]:
    calls = [0]
    forward = cls.forward

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


def test_guidance_uses_the_tiny_decoder_and_saves_the_full_vae_decode(
    make_config, tmp_path, tiny_components, tiny_decoder_dir, monkeypatch
) -> None:
    overrides = {"guidance.step_size": 5.0, "cutmix.enabled": False}
    config = make_config(tmp_path, **overrides, **{"generator.guidance_decoder": str(tiny_decoder_dir)})
    plan = SynthPlan.from_config(config, 3)
    indices = torch.arange(4)
    tiny_source = DiffusionSource(config, build_teacher(teacher_spec(config)), components=tiny_components)
    tiny_calls = _count_calls(monkeypatch, vae_blocks.DecoderTiny)
    vae_calls = _count_calls(monkeypatch, vae_blocks.Decoder)
    guided = tiny_source.generate(indices, plan.targets(indices))
    assert tiny_calls[0] == config.generator.num_steps  # one guided decode per step, all through the tiny
    assert vae_calls[0] == 1  # the saved images: the full VAE, once

    unguided_config = make_config(tmp_path, **overrides, **{"guidance.mode": "none"})
    unguided = DiffusionSource(
        unguided_config, build_teacher(teacher_spec(config)), components=tiny_components
    )
    plain = unguided.generate(indices, plan.targets(indices))
    # The gradient through the tiny decoder reaches z_t: the guided images moved away from the plain ones.
    assert (guided.images - plain.images).abs().max() > 1e-3


def test_guidance_decoder_folder_values(tmp_path) -> None:
    assert guidance_decoder_folder(tmp_path, "") is None
    assert guidance_decoder_folder(tmp_path, "pipeline") == tmp_path / "vae_tiny"
    assert guidance_decoder_folder(tmp_path, "/models/taesd") == Path("/models/taesd")


def test_a_wrong_guidance_decoder_is_refused(tiny_components, tiny_pipeline_dir, tmp_path) -> None:
    with pytest.raises(ComponentsError, match="no config.json"):
        load_guidance_decoder(tmp_path / "missing", tiny_components)
    with pytest.raises(ComponentsError, match="must be an AutoencoderTiny"):
        load_guidance_decoder(tiny_pipeline_dir / "vae", tiny_components)
    from diffusers import AutoencoderTiny

    AutoencoderTiny(
        latent_channels=8,
        encoder_block_out_channels=(8,) * 3,
        decoder_block_out_channels=(8,) * 3,
        num_encoder_blocks=(1,) * 3,
        num_decoder_blocks=(1,) * 3,
    ).save_pretrained(tmp_path / "eight")
    with pytest.raises(ComponentsError, match="8-channel latents"):
        load_guidance_decoder(tmp_path / "eight", tiny_components)


def test_training_brings_the_tiny_decoder_closer_to_the_vae(tiny_components) -> None:
    vae = tiny_components.vae
    images = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        z = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        target = vae.decode(z / vae.config.scaling_factor).sample
    torch.manual_seed(0)
    untrained = make_tiny_autoencoder(vae, QUICK).eval()
    trained, losses = train_tiny_decoder(vae, images, QUICK, seed=0)
    with torch.no_grad():
        before = (untrained.decode(z).sample - target).abs().mean()
        after = (trained.decode(z).sample - target).abs().mean()
    assert after < 0.5 * before
    assert set(losses) == {"decoder", "encoder"}
