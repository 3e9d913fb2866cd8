"""The worlds' generators: their recipes and parts, small Stable-Diffusion-shaped text-to-image models.

Each has every part of a Stable Diffusion pipeline, shrunk to CPU size, so the synthesis code runs on it
unchanged:

- ``AutoencoderKL``: ``[B, 3, 32, 32]`` images in [-1, 1] <-> ``[B, 4, 8, 8]`` latents (3 blocks, so
  ``vae_scale_factor`` 4); its config's ``scaling_factor`` is ``1 / std`` of the training latents, so the
  scaled latents the UNet sees have unit variance (as SD's 0.18215 does for its own VAE).
- ``UNet2DConditionModel`` on ``[B, 4, 8, 8]`` latents, predicting the noise (epsilon), conditioned by
  cross-attention on the text encoder's last hidden state.
- ``CLIPTextModel`` (random init, trained jointly with the UNet) and a word-level tokenizer built in code
  (:mod:`diffdfkd.worlds.tokenizer`); no hub files anywhere.
- ``DDPMScheduler``: SD's ``scaled_linear`` betas, "trailing" timestep spacing (the first sampling step
  starts from pure noise, which matters at 25 steps), no sample clipping (latents are not in [-1, 1]).

One recipe per world (:data:`CONFIGS`); what each is trained on and how it is captioned is in
:mod:`diffdfkd.worlds.captions`, the training in :mod:`diffdfkd.worlds.generator`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diffdfkd.worlds.emoji import PUBLIC_STYLES as EMOJI_STYLES

SHIPPED_GENERATOR = Path(__file__).resolve().parent.parent / "weights" / "digits_generator"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0
BUILD_INFO = "build_info.json"


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture and training recipe of the digits generator (see ``FULL`` and ``QUICK``)."""

    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 8
    latent_channels: int = 4
    # UNet: one entry of unet_attention per block; True makes it a cross-attention block
    unet_channels: tuple[int, ...] = (64, 64, 64)
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_layers_per_block: int = 1
    unet_time_embedding_dim: int = 128
    # also add an attention-pooled text embedding to the time embedding (diffusers' addition_embed_type
    # "text"): the prompt then reaches every ResNet block, and class conditioning is learnt much sooner
    text_time_embedding: bool = True
    attention_head_dim: int = 8
    norm_groups: int = 32
    # text encoder (CLIP-shaped) and tokenizer
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 8
    # VAE training
    vae_steps: int = 700
    vae_batch: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4  # on the KL per latent element, against the per-pixel reconstruction loss
    # latent cache: augmented copies of the data set, encoded once (copy 0 is un-augmented)
    latent_copies: int = 8
    # UNet + text encoder training
    unet_steps: int = 4000
    unet_batch: int = 96
    unet_lr: float = 5e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023); 0 turns it off
    p_empty: float = 0.1  # share of "" captions (classifier-free guidance)
    p_class: float = 0.5  # share of class prompts among the other captions
    # looks the images are rendered in, one drawn per image and epoch (diffdfkd.worlds.looks.LOOKS)
    looks: tuple[str, ...] = ("plain",)
    p_look: float = 0.0  # share of class prompts that name the look too
    p_name: float = 1.0  # share of class prompts that name the image itself (the emoji's name), if it has one
    # light augmentation (flips only where a world's classes allow them: never for digits)
    flip: bool = False
    max_rotation_deg: float = 8.0
    max_shift_px: float = 1.5
    max_scale: float = 0.08
    checkpoint_every: int = 250
    max_images: int | None = None  # train on the first N public images only (QUICK); None: all 5,000


FULL = GeneratorConfig()
QUICK = replace(
    FULL,
    vae_channels=(8, 8, 8),
    vae_norm_groups=4,
    unet_channels=(32, 32),
    unet_attention=(False, True),
    unet_time_embedding_dim=32,
    norm_groups=8,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    vae_steps=15,
    vae_batch=16,
    latent_copies=1,
    unet_steps=20,
    unet_batch=16,
    warmup_steps=5,
    checkpoint_every=10,
    max_images=500,
)
# The broad-prior world's recipe: six looks, captions that always name the digit and half the time the
# look. Sized to build in about an hour on ONE thread of a CPU shared with other jobs: 3,500 UNet steps
# of 64 latents (the MNIST-only recipe: 4,000 of 96).
BROAD = replace(
    FULL,
    looks=("plain", "scan", "thick", "thin", "slanted", "faint"),
    p_class=1.0,
    p_look=0.5,
    max_length=12,
    vae_steps=600,
    unet_steps=3500,
    unet_batch=64,
)
BROAD_QUICK = replace(QUICK, looks=BROAD.looks, p_class=1.0, p_look=0.5, max_length=12)
# The emoji world's recipe: colour images in six PUBLIC styles (diffdfkd.worlds.emoji), captions that
# name the class always, the emoji most of the time and the style half of the time. A wider VAE and UNet
# than the digits' (colour and detail), sized to build in about 2 hours on one thread of a 2-core CPU
# (alone: VAE about 0.9 s a step of 32, UNet about 0.65 s a step of 64). A first build with 2,400 UNet
# steps gave blobs outside the face and person classes (class adherence 0.25-0.51): 6,000 steps.
EMOJI = replace(
    FULL,
    vae_channels=(32, 64, 64),
    unet_channels=(64, 128, 128),
    looks=EMOJI_STYLES,
    p_class=0.95,
    p_look=0.5,
    p_name=0.7,
    flip=True,
    max_rotation_deg=6.0,
    max_shift_px=1.0,
    max_scale=0.06,
    max_length=24,
    vae_steps=1000,
    vae_batch=32,
    unet_steps=6000,
    unet_batch=64,
    latent_copies=4,
)
EMOJI_QUICK = replace(
    QUICK, looks=EMOJI_STYLES, p_class=0.95, p_look=0.5, p_name=0.7, flip=True, max_length=24
)
# world -> (full recipe, quick recipe for tests)
CONFIGS = {"digits": (BROAD, BROAD_QUICK), "digits-mnist": (FULL, QUICK), "emoji": (EMOJI, EMOJI_QUICK)}


# ----------------------------------------------------------------------------------------------
# the parts
# ----------------------------------------------------------------------------------------------


def make_vae(cfg: GeneratorConfig):
    """``AutoencoderKL``: ``[B, 3, 32, 32]`` in [-1, 1] -> ``[B, latent_channels, 8, 8]`` (3 blocks)."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=32,
    )


def make_unet(cfg: GeneratorConfig):
    """``UNet2DConditionModel`` on ``[B, latent_channels, 8, 8]``, cross-attending to ``[B, L, text_hidden]``."""
    from diffusers import UNet2DConditionModel

    if len(cfg.unet_attention) != len(cfg.unet_channels):
        raise ValueError("unet_attention needs one entry per entry of unet_channels")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention))
    return UNet2DConditionModel(
        sample_size=32 // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_groups,
        time_embedding_dim=cfg.unet_time_embedding_dim,
        addition_embed_type="text" if cfg.text_time_embedding else None,
        addition_embed_type_num_heads=cfg.text_heads,
    )


def make_text_encoder(cfg: GeneratorConfig, tokenizer):
    """A randomly initialised ``CLIPTextModel`` sized by ``cfg`` for ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def make_scheduler():
    """SD's DDPM schedule (scaled_linear betas 0.00085..0.012, 1000 steps), epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        timestep_spacing="trailing",
        steps_offset=1,
    )


# ----------------------------------------------------------------------------------------------
# assembly, loading, sampling
# ----------------------------------------------------------------------------------------------


def assemble_pipeline(vae, unet, text_encoder, tokenizer):
    """A ``StableDiffusionPipeline`` from the parts (no safety checker, no feature extractor)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, out_dir: Path, info: dict | None = None) -> Path:
    """``save_pretrained`` (safetensors) and record the tokenizer as ``PreTrainedTokenizerFast``.

    transformers 5 names the fast tokenizer class ``TokenizersBackend``, which transformers 4 lacks;
    ``PreTrainedTokenizerFast`` exists in both (an alias in 5), so the folder loads with either.
    """
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    index_path = out_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tok_path = out_dir / "tokenizer" / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
    if info is not None:
        (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_generator(path: str | os.PathLike | None = None):
    """Load a built generator (default: the shipped ``weights/digits_generator``) as a CPU pipeline."""
    from diffusers import StableDiffusionPipeline

    path = Path(path) if path is not None else SHIPPED_GENERATOR
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"no generator at {path} (model_index.json missing); build one with "
            "`diffdfkd world build-generator`"
        )
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)  # fp16 files run in fp32
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_images(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> torch.Tensor:
    """Images ``[B, 3, 32, 32]`` in [0, 1] for ``prompts`` (one per image), each from its own ``seed``.

    Per-sample generators make an image depend only on its (prompt, seed), not on the batch layout.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out = pipe(
        list(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="pt",
    )
    return out.images
