"""Adapt a generator to the teacher without data (beyond the paper): ``diffdfkd adapt-generator``.

Fine-tunes the UNet of the config's generator against the teacher (reward fine-tuning in the manner of
DRaFT, Clark et al. 2024, on one-step predictions) and writes a new pipeline folder, to be used with
``generator.path=<it>``. Each step, with the config's prompts, CFG scale, schedule and guidance weights:

1. one mixing group (``synth.samples_per_class_in_group`` samples of each class) is sampled with plain
   CFG from ``z_T`` down to a random step ``i`` of the schedule, without gradients;
2. at step ``i`` the UNet being adapted predicts ``x0_hat``, and the guidance's own loss
   (``TeacherGuide``: ``ce * CE + bn * L_bn``, no adversarial term) is back-propagated into its weights;
3. an anchor keeps it a denoiser: ``anchor * B * mean (eps_theta - eps_0)^2`` of the adapted and the
   original UNet on ``x0_hat`` re-noised at a random training timestep. Adam at ``lr``.

What is trained: the whole UNet (``lora_rank=0``), or a LoRA adapter of rank ``r`` (Hu et al. 2022,
through ``peft`` as diffusers integrates it: ``W' = W + B A``, ``A [r, in]``, ``B [out, r]`` zero at the
start, alpha = r so the scale is 1) on every attention projection (``to_q``, ``to_k``, ``to_v``,
``to_out.0``, self and cross), the original UNet then being the same one with its adapter off. A LoRA run
writes the pipeline folder with the adapter merged into the UNet's weights (``generator.path=<out>``, or
stock ``StableDiffusionPipeline.from_pretrained(<out>)``) and the adapter alone as diffusers'
``pytorch_lora_weights.safetensors`` in the same folder (``pipe.load_lora_weights(<out>)`` on a pipeline
of the base, the ``generator.path`` recorded in ``adapt_info.json``).

Measured in the digits worlds (BENCHMARKS.md, the efficacy bench's ``diffdfkd_adapted`` row): +8.6 points
for a generator that has never drawn the teacher's look or shapes (``digits-mnist``), -8.4 for one whose
prior already holds them (``digits``), so it is off unless asked for.

Crash-safe: the work goes to ``<out>.partial`` with a checkpoint (UNet, optimiser, random state, step;
read back with ``weights_only=True``, so a planted file runs no code)
every ``checkpoint_every`` steps; a rerun resumes from it and ends byte-identical (on the same device) to
an uninterrupted run; the finished folder, with ``adapt_info.json``, is renamed into place last.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.diffusion.components import decode_latents, encode_prompts, load_components
from diffdfkd.diffusion.denoiser import CFGDenoiser, Step, alpha_bar
from diffdfkd.experiment import resolve_config
from diffdfkd.files import load_checkpoint, torch_bytes
from diffdfkd.guidance.guide import TeacherGuide
from diffdfkd.models.teacher import build_teacher
from diffdfkd.synth.diffusion_source import class_prompts, prompt_rows
from diffdfkd.synth.writer import atomic_write
from diffdfkd.worlds import teacher_spec

INFO, CHECKPOINT = "adapt_info.json", "adapt_checkpoint.pt"
# Every attention projection of a diffusers UNet, self and cross (as diffusers' LoRA training scripts).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class AdaptSettings:
    """``steps`` (one mixing group each), Adam ``lr``, ``anchor`` weight, ``checkpoint_every`` steps,
    ``lora_rank`` (0: the whole UNet; else the rank of a LoRA adapter on its attention)."""

    steps: int = 150
    lr: float = 1e-4
    anchor: float = 1.0
    checkpoint_every: int = 25
    lora_rank: int = 0

    def __post_init__(self) -> None:
        for name, ok in (("steps", self.steps >= 1), ("checkpoint_every", self.checkpoint_every >= 1),
                         ("lr", self.lr > 0), ("anchor", self.anchor >= 0),
                         ("lora_rank", self.lora_rank >= 0)):  # fmt: skip
            if not ok:
                bound = ">= 0" if name in ("anchor", "lora_rank") else "> 0"
                value = getattr(self, name)
                raise ConfigError(f"adapt-generator: --{name.replace('_', '-')} must be {bound}, got {value}")


def adapt_generator(
    config: ExperimentConfig, out: str | Path, settings: AdaptSettings | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Write the config's generator adapted to its teacher to ``out`` (module docstring); return
    ``adapt_info.json``'s content. A finished ``out`` is returned as it is; one made from another
    config or with other settings is refused."""
    from tqdm.auto import tqdm

    settings = settings or AdaptSettings()
    config = resolve_config(config)
    out = Path(out)
    identity = json.loads(json.dumps({
        "generator": asdict(config.generator), "teacher": asdict(config.teacher), "guidance": asdict(config.guidance),
        "group": config.synth.samples_per_class_in_group, "seed": config.seed, "settings": asdict(settings),
    }))  # fmt: skip
    if (out / INFO).is_file():
        info = json.loads((out / INFO).read_text())
        if info.get("identity") != identity:
            raise ConfigError(
                f"{out} holds a generator adapted with another config or settings; choose another --out"
            )
        (out / CHECKPOINT).unlink(missing_ok=True)  # left by a stop between the rename and its removal
        return info
    if out.exists():
        raise ConfigError(f"{out} exists and is not an adapted generator; choose another --out")
    partial = out.with_name(out.name + ".partial")
    state = load_checkpoint(partial / CHECKPOINT) if (partial / CHECKPOINT).is_file() else None
    if state is not None and (not isinstance(state, dict) or state.get("identity") != identity):
        raise ConfigError(
            f"{partial} was begun with another config or settings; delete it or choose another --out"
        )
    gen, guidance = config.generator, config.guidance
    teacher = build_teacher(teacher_spec(config))
    # fp32 weights and compute whatever generator.dtype says: Adam on half-precision weights loses its updates
    components = load_components(gen.path, device=gen.device, dtype="fp32", scheduler=gen.scheduler)
    device = components.device
    unet = components.unet
    trained, base_unet = prepare_unet(unet, settings.lora_rank, config.seed)
    num_classes = len(teacher.class_names)
    classes = torch.arange(num_classes).repeat_interleave(config.synth.samples_per_class_in_group)
    targets = F.one_hot(classes, num_classes).float().to(device)
    per_class = config.synth.samples_per_class_in_group
    # conditioned as synthesis conditions its first mixing group (with prompt_styles: the first m styles)
    rows = prompt_rows(gen, torch.arange(len(classes)), classes, per_class, num_classes)
    cond = encode_prompts(components, class_prompts(gen, teacher.class_names))[rows]
    denoiser = CFGDenoiser(components, cond, encode_prompts(components, [gen.negative_prompt]), gen.cfg_scale)
    guide = TeacherGuide(
        teacher.to(device),
        lambda x0: decode_latents(components, x0),
        group_size=len(classes),
        bn_per=guidance.bn_per,
        ce_weight=guidance.ce_weight,
        bn_weight=guidance.bn_weight,
    )
    optimizer = torch.optim.Adam(trained.values(), lr=settings.lr)
    rng = torch.Generator().manual_seed(config.seed)  # its own generator: no other stream draws from it
    components.scheduler.set_timesteps(gen.num_steps, device=device)
    size = (gen.resolution or components.native_resolution) // components.vae_scale_factor
    shape = (len(classes), components.latent_channels, size, size)

    start, seconds, last = 0, 0.0, {}
    if state is not None:
        with torch.no_grad():
            for name, value in state["unet"].items():
                trained[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        start, seconds, last = state["step"], state["seconds"], state["last"]
    partial.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=settings.steps, initial=start, unit="step", desc="adapt generator", disable=not progress)
    clock = time.perf_counter()
    for it in range(start, settings.steps):
        total, parts = adaptation_loss(
            components, unet, base_unet, denoiser, guide, targets, shape, rng, settings.anchor
        )
        if not torch.isfinite(total):
            raise ConfigError(f"the adaptation's loss is not finite at step {it} ({parts}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        last = {"step": it, **parts}
        bar.update(1)
        bar.set_postfix({k: f"{last[k]:.3g}" for k in ("ce", "bn", "p_target", "drift")})
        done = it + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            weights = {name: p.detach() for name, p in trained.items()}
            state = {"identity": identity, "unet": weights, "optimizer": optimizer.state_dict(),
                     "rng": rng.get_state(), "step": done, "seconds": seconds + time.perf_counter() - clock,
                     "last": last}  # fmt: skip
            atomic_write(partial / CHECKPOINT, torch_bytes(state))
    bar.close()
    seconds += time.perf_counter() - clock
    info = {"identity": identity, "seconds": round(seconds, 1), "s_per_step": round(seconds / settings.steps, 3),
            "trainable_params": sum(p.numel() for p in trained.values()), "last": last}  # fmt: skip
    for item in partial.iterdir():  # parts half-copied before a stop are copied again
        if item.name != CHECKPOINT:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in Path(gen.path).iterdir():  # every part but the UNet unchanged
        if item.name != "unet":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, partial / item.name)
    if settings.lora_rank:
        save_lora(unet, partial)
    unet.requires_grad_(False).save_pretrained(partial / "unet")
    atomic_write(partial / INFO, (json.dumps(info, indent=1) + "\n").encode())
    partial.rename(out)
    (out / CHECKPOINT).unlink()
    return info


def prepare_unet(
    unet: torch.nn.Module, lora_rank: int, seed: int
) -> tuple[dict[str, torch.nn.Parameter], Callable[[], contextlib.AbstractContextManager]]:
    """Make ``unet`` trainable, whole (``lora_rank`` 0) or through a LoRA adapter (``add_lora``); return
    its trained parameters by name and a factory of context managers that give the original UNet (a
    frozen copy, or ``unet`` with its adapter off)."""
    unet.requires_grad_(not lora_rank)
    if lora_rank:
        add_lora(unet, lora_rank, seed)
        base_unet = functools.partial(_adapter_off, unet)
    else:
        base_unet = functools.partial(contextlib.nullcontext, copy.deepcopy(unet).requires_grad_(False))
    return {name: p for name, p in unet.named_parameters() if p.requires_grad}, base_unet


def adaptation_loss(
    components: Any,
    unet: torch.nn.Module,
    base_unet: Callable[[], contextlib.AbstractContextManager],
    denoiser: CFGDenoiser,
    guide: TeacherGuide,
    targets: torch.Tensor,
    shape: tuple[int, ...],
    rng: torch.Generator,
    anchor: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One adaptation step's loss (module docstring, 1-3) for one group of ``targets [B, K]`` with
    latents of ``shape [B, C, h, w]``, all noise drawn from ``rng``; also its parts for the log.
    ``components.scheduler`` holds the schedule (``set_timesteps``); ``denoiser`` runs ``unet``."""
    scheduler, device = components.scheduler, components.device
    timesteps = scheduler.timesteps
    z = torch.randn(shape, generator=rng).to(device)
    stop = int(torch.randint(len(timesteps), (), generator=rng))
    with torch.no_grad():
        for i, t in enumerate(timesteps[:stop]):
            eps = denoiser(z, Step(i, len(timesteps), t, alpha_bar(scheduler, i, t)))
            z = scheduler.step(eps, t, z, generator=rng).prev_sample
    step = Step(stop, len(timesteps), timesteps[stop], alpha_bar(scheduler, stop, timesteps[stop]))
    z_in = denoiser.model_input(z, step)
    x0_hat = denoiser.x0_at(z_in, denoiser.eps_at(z_in, step), step)
    loss, parts = guide.loss(x0_hat, targets)
    t = torch.randint(scheduler.config.num_train_timesteps, (shape[0],), generator=rng).to(device)
    noisy = scheduler.add_noise(x0_hat.detach(), torch.randn(shape, generator=rng).to(device), t)
    with torch.no_grad(), components.autocast(), base_unet() as base:
        reference = base(noisy, t, encoder_hidden_states=denoiser.cond).sample.float()
    with components.autocast():
        drift = (unet(noisy, t, encoder_hidden_states=denoiser.cond).sample.float() - reference).pow(2).mean()
    return loss + anchor * shape[0] * drift, {"at_step": stop, "drift": drift.item(), **parts}


def add_lora(unet: torch.nn.Module, rank: int, seed: int) -> None:
    """Add a LoRA adapter of ``rank`` on every attention projection of ``unet`` (alpha = rank), drawn
    from ``seed`` (``A`` random, ``B`` zero). Only the adapter trains."""
    from peft import LoraConfig

    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(lora)


def save_lora(unet: torch.nn.Module, folder: Path) -> None:
    """Write ``unet``'s adapter to ``folder / pytorch_lora_weights.safetensors`` (diffusers' LoRA file),
    then merge it into the UNet's weights and remove the adapter layers."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    # No adapter metadata: safetensors writes a header of several metadata keys in a random order (the
    # file would differ run to run); loaders read the rank from the shapes and alpha = rank is their default.
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    unet.fuse_lora()
    unet.unload_lora()


@contextlib.contextmanager
def _adapter_off(unet: torch.nn.Module):
    """``unet`` with its LoRA adapter switched off: the original UNet."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
