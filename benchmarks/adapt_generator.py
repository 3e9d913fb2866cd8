"""Beyond the paper (issue 14): adapt the generator to the teacher without data, then score it.

Fine-tunes the UNet of a world's shipped generator against the teacher (reward fine-tuning in the
manner of DRaFT, Clark et al. 2024, on one-step predictions). Each step:

1. one mixing group (``synth.samples_per_class_in_group`` samples of each class, the config's class
   prompts and CFG scale) is sampled with plain CFG from ``z_T`` down to a random step ``i`` of the
   config's schedule, without gradients;
2. at step ``i`` the UNet being adapted predicts ``x0_hat``; the guidance's own loss
   (``TeacherGuide``: ``ce * CE + bn * L_bn`` with the config's weights and BN units, no adversarial
   term) is back-propagated into the UNet's weights;
3. an anchor keeps it a denoiser: ``anchor * B * mean (eps_theta - eps_0)^2`` of the adapted and the
   original UNet on ``x0_hat`` re-noised at a random training timestep.

Then the adapted generator is scored with ``tune_digits.py``'s signals (PUBLIC and synthetic only; no
private image is read), with the world's shipped guidance and unguided. Nothing here is a shipped
option: it is the measurement behind BENCHMARKS.md's paragraph on adapting the generator.

``--save DIR`` keeps the adapted pipeline (``baselines_digits.py``'s ``diffdfkd_adapted`` row reads it
from ``<its out folder>/adapted_generator``).

Usage: python benchmarks/adapt_generator.py --world digits [--steps 150] [--lr 1e-4] [--anchor 1]
[--per-class 30] [--json F] [--save DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tune_digits import UNGUIDED, score  # noqa: E402

from diffdfkd.bench import WORLD_CONFIGS  # noqa: E402
from diffdfkd.config import ExperimentConfig, load_config  # noqa: E402
from diffdfkd.diffusion.components import decode_latents, encode_prompts, load_components  # noqa: E402
from diffdfkd.diffusion.denoiser import CFGDenoiser, Step, alpha_bar  # noqa: E402
from diffdfkd.guidance.guide import TeacherGuide  # noqa: E402
from diffdfkd.models.teacher import build_teacher  # noqa: E402
from diffdfkd.synth.run import resolve_config  # noqa: E402
from diffdfkd.worlds import get_world, teacher_spec  # noqa: E402
from diffdfkd.worlds.judge import load_judge, load_look_classifier  # noqa: E402


def adapt(config: ExperimentConfig, out: Path, *, steps: int, lr: float, anchor: float) -> dict:
    """Write the adapted pipeline to ``out`` (a new folder: a copy of the config's generator with the new
    UNet and ``adapt_info.json``, renamed into place when complete) and return what it measured."""
    gen, guidance = config.generator, config.guidance
    teacher = build_teacher(teacher_spec(config))
    components = load_components(gen.path, scheduler=gen.scheduler)
    unet = components.unet
    original = copy.deepcopy(unet)
    unet.requires_grad_(True)
    names = [n.replace("_", " ") for n in teacher.class_names]
    class_embeds = encode_prompts(components, [gen.prompt_template.format(label=n) for n in names])
    negative = encode_prompts(components, [gen.negative_prompt])
    group = config.synth.samples_per_class_in_group
    guide = TeacherGuide(
        teacher,
        lambda x0: decode_latents(components, x0),
        group_size=group * len(names),
        bn_per=guidance.bn_per,
        ce_weight=guidance.ce_weight,
        bn_weight=guidance.bn_weight,
    )
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    scheduler = components.scheduler
    scheduler.set_timesteps(gen.num_steps)
    timesteps = scheduler.timesteps
    classes = torch.arange(len(names)).repeat_interleave(group)
    targets = torch.nn.functional.one_hot(classes, len(names)).float()
    denoiser = CFGDenoiser(components, class_embeds[classes], negative, gen.cfg_scale)
    rng = torch.Generator().manual_seed(config.seed)
    size = components.native_resolution // components.vae_scale_factor
    start, logs = time.perf_counter(), []
    for it in range(steps):
        z = torch.randn(len(classes), components.latent_channels, size, size, generator=rng)
        stop = int(torch.randint(len(timesteps), (), generator=rng))
        with torch.no_grad():
            for i, t in enumerate(timesteps[:stop]):
                z = scheduler.step(denoiser(z, Step(i, len(timesteps), t, alpha_bar(scheduler, i, t))), t, z,
                                   generator=rng).prev_sample  # fmt: skip
        step = Step(stop, len(timesteps), timesteps[stop], alpha_bar(scheduler, stop, timesteps[stop]))
        z_in = denoiser.model_input(z, step)
        x0_hat = denoiser.x0_at(z_in, denoiser.eps_at(z_in, step), step)
        loss, parts = guide.loss(x0_hat, targets)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(classes),), generator=rng)
        noise = torch.randn(x0_hat.shape, generator=rng)
        noisy = scheduler.add_noise(x0_hat.detach(), noise, t)
        with torch.no_grad():
            reference = original(noisy, t, encoder_hidden_states=denoiser.cond).sample
        drift = (unet(noisy, t, encoder_hidden_states=denoiser.cond).sample - reference).pow(2).mean()
        optimizer.zero_grad()
        (loss + anchor * len(classes) * drift).backward()
        optimizer.step()
        logs.append({"step": it, "at": stop, "drift": drift.item(), **parts})
        if it % 25 == 0 or it == steps - 1:
            print(json.dumps(logs[-1]), flush=True)
    seconds = time.perf_counter() - start
    unet.requires_grad_(False)
    info = {"steps": steps, "lr": lr, "anchor": anchor, "seconds": round(seconds, 1),
            "s_per_step": round(seconds / max(steps, 1), 3), "last": logs[-1] if logs else {}}  # fmt: skip
    partial = out.with_name(out.name + ".partial")  # a crash leaves no half-written pipeline at out
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(gen.path, partial)
    unet.save_pretrained(partial / "unet")
    (partial / "adapt_info.json").write_text(json.dumps(info, indent=1) + "\n")
    partial.rename(out)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default="digits", choices=sorted(WORLD_CONFIGS), help="world")
    parser.add_argument("--steps", type=int, default=150, help="adaptation steps (one mixing group each)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the UNet")
    parser.add_argument("--anchor", type=float, default=1.0, help="weight of the denoiser anchor")
    parser.add_argument("--per-class", type=int, default=30, help="images per class per scored candidate")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--save", default="", help="keep the adapted pipeline in this (new) folder")
    args = parser.parse_args()
    if args.save and Path(args.save).exists():
        parser.error(f"{args.save} exists; choose a new folder for the adapted pipeline")
    config = resolve_config(load_config(WORLD_CONFIGS[args.world], []))
    judge = load_judge(args.world)
    looks = load_look_classifier() if len(get_world(args.world).looks) > 1 else None
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.save or Path(folder) / "generator")
        info = adapt(config, path, steps=args.steps, lr=args.lr, anchor=args.anchor)
        for guided in ([], UNGUIDED):
            row = score(args.world, [f"generator.path={path}"], guided, args.per_class, judge, looks, kd=True)
            rows.append({"world": args.world, "adapt": info, **row})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
