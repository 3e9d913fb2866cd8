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

Measured in the digits worlds (BENCHMARKS.md, the efficacy bench's ``diffdfkd_adapted`` row): +8.6 points
for a generator that has never drawn the teacher's look or shapes (``digits-mnist``), -8.4 for one whose
prior already holds them (``digits``), so it is off unless asked for.

Crash-safe: the work goes to ``<out>.partial`` with a checkpoint (UNet, optimiser, random state, step;
read back with ``weights_only=True``, so a planted file runs no code)
every ``checkpoint_every`` steps; a rerun resumes from it and ends byte-identical (on the same device) to
an uninterrupted run; the finished folder, with ``adapt_info.json``, is renamed into place last.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.diffusion.components import decode_latents, encode_prompts, load_components
from diffdfkd.diffusion.denoiser import CFGDenoiser, Step, alpha_bar
from diffdfkd.files import load_checkpoint, torch_bytes
from diffdfkd.guidance.guide import TeacherGuide
from diffdfkd.models.teacher import build_teacher
from diffdfkd.synth.diffusion_source import class_prompts
from diffdfkd.synth.run import resolve_config
from diffdfkd.synth.writer import atomic_write
from diffdfkd.worlds import teacher_spec

INFO, CHECKPOINT = "adapt_info.json", "adapt_checkpoint.pt"


@dataclass(frozen=True)
class AdaptSettings:
    """``steps`` (one mixing group each), Adam ``lr``, ``anchor`` weight, ``checkpoint_every`` steps."""

    steps: int = 150
    lr: float = 1e-4
    anchor: float = 1.0
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        for name, ok in (("steps", self.steps >= 1), ("checkpoint_every", self.checkpoint_every >= 1),
                         ("lr", self.lr > 0), ("anchor", self.anchor >= 0)):  # fmt: skip
            if not ok:
                bound = ">= 0" if name == "anchor" else "> 0"
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
    original = copy.deepcopy(unet)
    unet.requires_grad_(True)
    num_classes = len(teacher.class_names)
    classes = torch.arange(num_classes).repeat_interleave(config.synth.samples_per_class_in_group)
    targets = F.one_hot(classes, num_classes).float().to(device)
    cond = encode_prompts(components, class_prompts(gen, teacher.class_names))[classes]
    denoiser = CFGDenoiser(components, cond, encode_prompts(components, [gen.negative_prompt]), gen.cfg_scale)
    guide = TeacherGuide(
        teacher.to(device),
        lambda x0: decode_latents(components, x0),
        group_size=len(classes),
        bn_per=guidance.bn_per,
        ce_weight=guidance.ce_weight,
        bn_weight=guidance.bn_weight,
    )
    optimizer = torch.optim.Adam(unet.parameters(), lr=settings.lr)
    rng = torch.Generator().manual_seed(config.seed)  # its own generator: no other stream draws from it
    scheduler = components.scheduler
    scheduler.set_timesteps(gen.num_steps, device=device)
    timesteps = scheduler.timesteps
    size = (gen.resolution or components.native_resolution) // components.vae_scale_factor
    shape = (len(classes), components.latent_channels, size, size)

    start, seconds, last = 0, 0.0, {}
    if state is not None:
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        start, seconds, last = state["step"], state["seconds"], state["last"]
    partial.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=settings.steps, initial=start, unit="step", desc="adapt generator", disable=not progress)
    clock = time.perf_counter()
    for it in range(start, settings.steps):
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
        t = torch.randint(scheduler.config.num_train_timesteps, (len(classes),), generator=rng).to(device)
        noisy = scheduler.add_noise(x0_hat.detach(), torch.randn(shape, generator=rng).to(device), t)
        with torch.no_grad(), components.autocast():
            reference = original(noisy, t, encoder_hidden_states=denoiser.cond).sample.float()
        with components.autocast():
            drift = (
                (unet(noisy, t, encoder_hidden_states=denoiser.cond).sample.float() - reference).pow(2).mean()
            )
        total = loss + settings.anchor * len(classes) * drift
        if not torch.isfinite(total):
            raise ConfigError(f"the adaptation's loss is not finite at step {it} ({parts}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        last = {"step": it, "at_step": stop, "drift": drift.item(), **parts}
        bar.update(1)
        bar.set_postfix({k: f"{last[k]:.3g}" for k in ("ce", "bn", "p_target", "drift")})
        done = it + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            state = {"identity": identity, "unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": rng.get_state(), "step": done, "seconds": seconds + time.perf_counter() - clock,
                     "last": last}  # fmt: skip
            atomic_write(partial / CHECKPOINT, torch_bytes(state))
    bar.close()
    seconds += time.perf_counter() - clock
    info = {"identity": identity, "seconds": round(seconds, 1), "s_per_step": round(seconds / settings.steps, 3),
            "last": last}  # fmt: skip
    for item in partial.iterdir():  # parts half-copied before a stop are copied again
        if item.name != CHECKPOINT:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in Path(gen.path).iterdir():  # every part but the UNet unchanged
        if item.name != "unet":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, partial / item.name)
    unet.requires_grad_(False).save_pretrained(partial / "unet")
    atomic_write(partial / INFO, (json.dumps(info, indent=1) + "\n").encode())
    partial.rename(out)
    (out / CHECKPOINT).unlink()
    return info
