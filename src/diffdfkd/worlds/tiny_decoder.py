"""A tiny decoder for the guidance gradient, distilled from a generator's VAE on PUBLIC images.

Guidance differentiates ``L(T(D(x0_hat)))`` through the VAE decoder ``D`` at every guided step; at
Stable Diffusion scale ``D``'s forward and backward are about half of a guided step. A small decoder
``D_tiny`` (diffusers' ``AutoencoderTiny``, the TAESD architecture) that maps the same latents to about
the same images gives nearly the same gradient for a fraction of the cost, while the saved image is still
decoded by ``D`` (``generator.guidance_decoder``, see :mod:`diffdfkd.diffusion.components`).

This module trains one for a shipped generator, data-free with respect to the private data:

- inputs: the UNet-space latents ``z = scaling * (mu + sigma * n)`` of PUBLIC images under the VAE's
  encoder, perturbed as guidance perturbs them: ``z + s * n'`` with ``s ~ U(0, noise)`` per sample, and
  convex mixtures of two latents (the blurry ``x0_hat`` of the early, noisy steps is close to an average);
- targets: the full decoder's images ``D(z / scaling)`` of the same latents, in [-1, 1];
- loss: mean absolute error of the decoder (images) plus that of the encoder (latents), so the folder is a
  complete ``AutoencoderTiny`` whose encoder also matches the VAE's (only the decoder is used here).

The ``AutoencoderTiny`` works in UNet space (``scaling_factor = 1``, ``shift_factor = 0``), as TAESD does
for Stable Diffusion: ``decode_latents`` then treats it exactly like a VAE. Seeded; a few minutes on CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffdfkd.diffusion.components import TINY_DECODER_DIR
from diffdfkd.worlds import World
from diffdfkd.worlds.looks import LOOKS, render_look


@dataclass(frozen=True)
class TinyDecoderConfig:
    """Width, depth and training recipe of the tiny autoencoder."""

    channels: int = 16
    blocks: int = 1
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    noise: float = 1.0  # largest std of the Gaussian perturbation of the latents
    mix_fraction: float = 0.25  # share of each batch that is a convex mixture of two latents


QUICK = TinyDecoderConfig(channels=8, steps=20, batch_size=16)


def make_tiny_autoencoder(vae: torch.nn.Module, cfg: TinyDecoderConfig) -> torch.nn.Module:
    """An ``AutoencoderTiny`` with the VAE's latent channels and down/up-sampling factor, in UNet space."""
    from diffusers import AutoencoderTiny

    stages = len(vae.config.block_out_channels)  # the VAE scales by 2 ** (stages - 1)
    return AutoencoderTiny(
        in_channels=vae.config.in_channels,
        out_channels=vae.config.out_channels,
        latent_channels=vae.config.latent_channels,
        encoder_block_out_channels=(cfg.channels,) * stages,
        decoder_block_out_channels=(cfg.channels,) * stages,
        num_encoder_blocks=(cfg.blocks,) * stages,
        num_decoder_blocks=(cfg.blocks,) * stages,
        upsampling_scaling_factor=2,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


@torch.no_grad()
def _posteriors(vae: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, ...]:
    """The VAE encoder's posterior mean and std ``[N, C, h, w]`` of ``images [N, 3, H, W]`` in [0, 1]."""
    means, stds = [], []
    for chunk in images.split(batch):
        posterior = vae.encode(chunk * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def _training_pairs(
    vae: torch.nn.Module,
    images: torch.Tensor,
    posteriors: tuple[torch.Tensor, torch.Tensor],
    cfg: TinyDecoderConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: ``x [B, 3, H, W]`` in [-1, 1], its UNet-space latents ``z_x [B, C, h, w]``, perturbed
    latents ``z`` and the full decoder's images ``D(z) [B, 3, H, W]`` in [-1, 1]."""
    pick = torch.randint(len(images), (cfg.batch_size,), generator=generator)
    x = images[pick] * 2 - 1
    mean, std = posteriors[0][pick], posteriors[1][pick]
    z = (mean + std * torch.randn(mean.shape, generator=generator)) * vae.config.scaling_factor
    z_x = z.clone()
    mixed = int(cfg.mix_fraction * len(z))
    if mixed:
        weight = torch.rand(mixed, 1, 1, 1, generator=generator)
        partner = z[torch.randperm(len(z), generator=generator)[:mixed]]
        z[:mixed] = weight * z[:mixed] + (1 - weight) * partner
    z = z + cfg.noise * torch.rand(len(z), 1, 1, 1, generator=generator) * torch.randn(
        z.shape, generator=generator
    )
    decoded = vae.decode(z / vae.config.scaling_factor).sample
    return x, z_x, z, decoded


def train_tiny_decoder(
    vae: torch.nn.Module, images: torch.Tensor, cfg: TinyDecoderConfig, *, seed: int = 0
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Distil an ``AutoencoderTiny`` from ``vae`` on ``images [N, 3, H, W]`` in [0, 1] (PUBLIC data).

    Returns the trained model (eval mode) and its final losses (mean absolute errors over the last 10 %
    of the steps: ``decoder`` in image units of [-1, 1], ``encoder`` in UNet-space latent units).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = vae.eval().requires_grad_(False)
    tiny = make_tiny_autoencoder(vae, cfg).train()
    optimiser = torch.optim.AdamW(tiny.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=cfg.steps)
    posteriors = _posteriors(vae, images)
    tail = max(1, cfg.steps // 10)
    sums = {"decoder": 0.0, "encoder": 0.0}
    for step in tqdm(range(cfg.steps), desc="tiny decoder", unit="step"):
        x, z_x, z, decoded = _training_pairs(vae, images, posteriors, cfg, generator)
        decoder_loss = F.l1_loss(tiny.decode(z).sample, decoded)
        encoder_loss = F.l1_loss(tiny.encode(x).latents, z_x)
        optimiser.zero_grad(set_to_none=True)
        (decoder_loss + encoder_loss).backward()
        optimiser.step()
        schedule.step()
        if step >= cfg.steps - tail:
            sums["decoder"] += decoder_loss.item() / tail
            sums["encoder"] += encoder_loss.item() / tail
    return tiny.eval().requires_grad_(False), sums


def public_renderings(world: World) -> torch.Tensor:
    """The world's PUBLIC training images ``[N * looks, 3, H, W]`` in [0, 1], rendered in every look its
    generator was trained on (digits), or as they are where each image is already in its style (emoji):
    the latents a guidance decoder must decode."""
    images, _ = world.load("public:train")
    if not set(world.looks) <= set(LOOKS):
        return images
    return torch.cat([render_look(images, look) for look in world.looks])


def build_tiny_decoder(
    generator_path: str | Path,
    images: torch.Tensor,
    *,
    out: str | Path | None = None,
    cfg: TinyDecoderConfig = TinyDecoderConfig(),
    seed: int = 0,
) -> Path:
    """Train a tiny decoder for the pipeline at ``generator_path`` on PUBLIC ``images [N, 3, H, W]`` in
    [0, 1] and save it (``save_pretrained`` plus ``build_info.json``) to ``out``, by default the pipeline's
    own ``vae_tiny/`` folder (what ``generator.guidance_decoder=pipeline`` loads)."""
    from diffusers import AutoencoderKL

    generator_path = Path(generator_path)
    out = Path(out) if out is not None else generator_path / TINY_DECODER_DIR
    vae = AutoencoderKL.from_pretrained(generator_path / "vae", local_files_only=True)
    start = time.perf_counter()
    tiny, losses = train_tiny_decoder(vae, images, cfg, seed=seed)
    tiny.save_pretrained(out, safe_serialization=True)
    # AutoencoderTiny records its decoder widths a second time under a key its constructor does not take
    # (loading then warns): keep the config to the constructor's arguments, as TAESD's folders do.
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("block_out_channels", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    info = {
        "config": asdict(cfg),
        "seed": seed,
        "images": len(images),
        "final_mean_abs_error": losses,
        "parameters": sum(p.numel() for p in tiny.decoder.parameters()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
