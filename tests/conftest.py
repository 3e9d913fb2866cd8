"""Shared test fixtures: a tiny random Stable-Diffusion-style pipeline folder and tiny random teachers.

- ``tiny_pipeline_dir`` (session): a ``StableDiffusionPipeline.save_pretrained`` folder with a random
  UNet (latents 4 x 8 x 8), VAE (32 x 32 RGB images, factor 4), CLIP text encoder, the digits world's
  word-level tokenizer and an SD-like DDPM scheduler. Loads offline in about a second.
- ``make_tiny_pipeline(path, seed=0, max_length=8)``: another such folder (``max_length``: the tokenizer's window).
- ``tiny_components`` (session): that folder loaded with ``load_components`` (CPU, fp32, DDPM).
- ``make_teacher(class_names=..., arch="lenet5", seed=0)``: a random-weight ``Teacher`` (32 x 32 RGB
  input in [0, 1], BatchNorm running statistics 0 / 1); ``tiny_teacher`` (session): one with ``TINY_CLASSES``.
- ``tiny_teacher_file`` (session): safetensors weights of ``tiny_teacher`` (arch "lenet5").
- ``eval_folder``: a labelled 3-class ImageFolder of random 32x32 images (a stand-in test split).
- ``make_config(out_dir, **overrides)``: an ``ExperimentConfig`` for ``synthesize`` on the tiny parts
  (3 steps, batch 4, groups of 4, 2 images per class); overrides use dotted keys via ``replace``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# Tiny models run fastest on one thread, and far faster than on two when other jobs share the cores.
torch.set_num_threads(int(os.environ.get("DIFFDFKD_TEST_THREADS", "1")))

TINY_CLASSES = ("zero", "one", "two")


def build_tiny_pipeline(path: Path, seed: int = 0, max_length: int = 8) -> Path:
    """Save a tiny random SD-style pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDPM) to ``path``;
    ``max_length``: the tokenizer's window (prompts longer than it are refused)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffdfkd.worlds.tokenizer import build_tokenizer, vocabulary

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    tokenizer = build_tokenizer(max_length=max_length)
    # the text encoder draws from its own seed (not from what the UNet and VAE left of the stream)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary()),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_teacher(class_names: Sequence[str] = TINY_CLASSES, arch: str = "lenet5", seed: int = 0):
    """A random-weight ``Teacher`` over ``class_names`` (32 x 32 RGB in [0, 1], no normalisation)."""
    from diffdfkd.models import create_model
    from diffdfkd.models.teacher import Teacher

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=len(class_names), in_channels=3)
    return Teacher(
        model, input_size=32, in_channels=3, mean=(0.0,) * 3, std=(1.0,) * 3, class_names=tuple(class_names)
    )


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def make_tiny_pipeline() -> Callable[..., Path]:
    return build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_components(tiny_pipeline_dir: Path):
    from diffdfkd.diffusion.components import load_components

    return load_components(tiny_pipeline_dir, device="cpu", dtype="fp32", scheduler="ddpm")


@pytest.fixture(scope="session")
def make_teacher() -> Callable[..., Any]:
    return build_tiny_teacher


@pytest.fixture(scope="session")
def tiny_teacher():
    return build_tiny_teacher()


@pytest.fixture(scope="session")
def tiny_teacher_file(tiny_teacher, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny_teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_teacher.model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def make_config(tiny_pipeline_dir: Path, tiny_teacher_file: Path) -> Callable[..., Any]:
    from diffdfkd.config import ExperimentConfig, replace

    def make(out_dir: str | Path, **overrides: Any) -> ExperimentConfig:
        base = {
            "seed": 0,
            "teacher.arch": "lenet5",
            "teacher.weights": str(tiny_teacher_file),
            "teacher.class_names": list(TINY_CLASSES),
            "generator.path": str(tiny_pipeline_dir),
            "generator.num_steps": 3,
            "generator.cfg_scale": 2.0,
            "generator.prompt": "a handwritten digit",
            "generator.device": "cpu",
            "synth.images_per_class": 2,
            "synth.batch_size": 4,
            "synth.group_size": 4,
            "synth.samples_per_class_in_group": 2,
            "synth.out_dir": str(out_dir),
        }
        return replace(ExperimentConfig(), **{**base, **overrides})

    return make


@pytest.fixture
def eval_folder(tmp_path):
    """A labelled 3-class ImageFolder of random 32x32 images (stands in for the private test split)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("zero", "one", "two")):
        (tmp_path / "eval" / f"{k}_{name}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "eval" / f"{k}_{name}" / f"{i}.png")
    return tmp_path / "eval"
