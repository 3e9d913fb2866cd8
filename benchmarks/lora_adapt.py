"""What LoRA saves in ``diffdfkd adapt-generator`` (``--lora-rank R``) against the whole-UNet adaptation.

Three parts, each written to ``--out`` (``benchmarks/results/lora/``) as JSON and Markdown:

- ``--world digits-mnist``: the library's own command (``synth.adapt.adapt_generator``) for ``--steps``
  steps at each of ``--ranks`` (0: the whole UNet) on the world's shipped generator: trainable
  parameters and seconds per step (``<world>.json``).
- ``--sd15``: the Stable Diffusion 1.5 UNet (random weights) built on the meta device: trainable
  parameters and the fp32 training memory each rank adds (gradients, Adam's two moments, and for the
  whole UNet the frozen copy its anchor needs); then ONE real adaptation step
  (``synth.adapt.adaptation_loss`` + backward + Adam, the library's step) of the full SD 1.5 parts at
  ``--resolution`` px on ``--device`` for each of ``--real-ranks``: seconds and the Adam state measured
  from the optimiser (``sd15_<device>.json``). ``synth_throughput.py`` runs the same rows on a GPU.

Usage: python benchmarks/lora_adapt.py --world digits-mnist [--steps 20] [--ranks 0 4 16]
       python benchmarks/lora_adapt.py --sd15 [--real-ranks 4 16] [--resolution 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "lora"
GIB = 2**30


def _label(rank: int) -> str:
    return "full" if rank == 0 else f"lora{rank}"


def digits_rows(world: str, ranks: list[int], steps: int) -> list[dict]:
    """``adapt_generator`` for ``steps`` steps at each rank in the world's shipped setting."""
    from diffdfkd.bench import WORLD_CONFIGS
    from diffdfkd.config import load_config
    from diffdfkd.synth.adapt import AdaptSettings, adapt_generator

    config = load_config(WORLD_CONFIGS[world], [])
    rows = []
    for rank in ranks:
        settings = AdaptSettings(steps=steps, lora_rank=rank, checkpoint_every=steps)
        with tempfile.TemporaryDirectory() as folder:
            info = adapt_generator(config, Path(folder) / "generator", settings, progress=False)
        rows.append({"row": _label(rank), "lora_rank": rank, "steps": steps,
                     "trainable_params": info["trainable_params"], "s_per_step": info["s_per_step"],
                     "last": info["last"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training_memory(unet: torch.nn.Module, rank: int) -> dict:
    """Trainable parameters and the fp32 bytes training adds for ``rank`` (0: whole UNet) on ``unet``
    (meta device: counted, not allocated)."""
    from diffdfkd.synth.adapt import prepare_unet

    total = sum(p.numel() for p in unet.parameters())
    trained, _ = prepare_unet(unet, rank, seed=0)
    n = sum(p.numel() for p in trained.values())
    return {
        "row": _label(rank),
        "lora_rank": rank,
        "unet_params": total,
        "trainable_params": n,
        "trainable_fraction": n / total,
        "grad_gib": 4 * n / GIB,
        "adam_state_gib": 8 * n / GIB,  # exp_avg and exp_avg_sq, fp32
        "frozen_copy_gib": 4 * total / GIB if rank == 0 else 0.0,  # the anchor's original UNet
    }


def sd15_meta_rows(ranks: list[int]) -> list[dict]:
    """``training_memory`` of the SD 1.5 UNet for each rank, a fresh meta-device UNet each."""
    from diffusers import UNet2DConditionModel
    from sd15 import SD15_UNET

    rows = []
    for rank in ranks:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**SD15_UNET)
        rows.append(training_memory(unet, rank))
    return rows


def real_step(components: Any, teacher: torch.nn.Module, rank: int, group: int, resolution: int) -> dict:
    """One timed adaptation step (``adaptation_loss``, backward, Adam) at ``rank`` on ``components``,
    after one untimed warm-up step; the UNet is restored to its weights afterwards (adapter removed)."""
    from diffdfkd.diffusion.components import decode_latents, encode_prompts
    from diffdfkd.diffusion.denoiser import CFGDenoiser
    from diffdfkd.guidance.guide import TeacherGuide
    from diffdfkd.synth.adapt import adaptation_loss, prepare_unet

    unet, device = components.unet, components.device
    saved = {k: v.clone() for k, v in unet.state_dict().items()} if rank == 0 else None
    trained, base_unet = prepare_unet(unet, rank, seed=0)
    classes = torch.arange(group) % teacher.num_classes
    targets = F.one_hot(classes, teacher.num_classes).float().to(device)
    cond = encode_prompts(components, ["a realistic photo"])[[0] * group]
    denoiser = CFGDenoiser(components, cond, encode_prompts(components, [""]), 3.0)
    guide = TeacherGuide(teacher, lambda x0: decode_latents(components, x0), group_size=group, bn_weight=0.1)
    optimizer = torch.optim.Adam(trained.values(), lr=1e-4)
    components.scheduler.set_timesteps(2, device=device)  # a short schedule: at most 1 step sampled first
    latent = resolution // components.vae_scale_factor
    shape = (group, components.latent_channels, latent, latent)
    rng = torch.Generator().manual_seed(0)
    seconds = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # warm-up, then the timed step
        start = time.perf_counter()
        total, parts = adaptation_loss(components, unet, base_unet, denoiser, guide, targets, shape, rng, 1.0)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    adam = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.ndim)
    row = {"row": _label(rank), "lora_rank": rank, "group": group, "resolution_px": resolution,
           "trainable_params": sum(p.numel() for p in trained.values()), "s_per_step": seconds[-1],
           "adam_state_gib_measured": adam / GIB, "at_step": parts["at_step"]}  # fmt: skip
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    del optimizer, trained, base_unet
    if rank:
        unet.unload_lora()
    else:
        unet.load_state_dict(saved)
    unet.requires_grad_(False)
    gc.collect()
    return row


def sd15_real_rows(
    ranks: list[int], device: str, group: int, resolution: int, tiny: bool = False
) -> list[dict]:
    """``real_step`` for each rank on the (random-weight) SD 1.5 parts and a CIFAR ResNet-34 teacher."""
    from sd15 import sd15_components
    from synth_throughput import cifar_teacher

    components = sd15_components(tiny, device, "fp32")
    teacher = cifar_teacher(components.device)
    rows = []
    for rank in ranks:
        rows.append(real_step(components, teacher, rank, group, resolution))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"# {result['title']}", "", f"Machine: {result['machine']}; command: `{result['command']}`", ""]
    lines += [f"- {n}" for n in result["notes"]] + [""]
    for name, rows in result["tables"].items():
        keys = [k for k in rows[0] if k != "last"]
        lines += [f"## {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--world", default="", help="a digits world: time the library's adapt-generator there"
    )
    parser.add_argument("--sd15", action="store_true", help="the SD 1.5 counts and real steps")
    parser.add_argument("--steps", type=int, default=20, help="adaptation steps per rank (--world)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 4, 16], help="0 = the whole UNet")
    parser.add_argument(
        "--real-ranks", type=int, nargs="*", default=[4, 16], help="ranks of the real SD step"
    )
    parser.add_argument("--resolution", type=int, default=64, help="image side of the real SD step")
    parser.add_argument("--group", type=int, default=2, help="images per adaptation step (real SD step)")
    parser.add_argument("--device", default="cpu", help="device of the real SD step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON and Markdown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(torch.device(args.device))
    command = "python benchmarks/lora_adapt.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.world:
        stem, title = args.world, f"adapt-generator in `{args.world}`: LoRA against the whole UNet"
        tables = {"library command, shipped setting": digits_rows(args.world, args.ranks, args.steps)}
        notes = [f"`adapt_generator` for {args.steps} steps per row (the shipped setting: lr 1e-4, anchor 1, one "
                 "mixing group per step, the world's schedule and guidance weights); s/step = its wall time "
                 "over the steps, on a CPU shared with other jobs."]  # fmt: skip
    elif args.sd15:
        stem, title = (
            f"sd15_{args.device.split(':')[0]}",
            "adapt-generator at SD 1.5 scale: LoRA against the whole UNet",
        )
        tables = {"SD 1.5 UNet, counted on the meta device (fp32)": sd15_meta_rows(args.ranks)}
        if args.real_ranks:
            tables[f"one real step, {args.resolution} px, group {args.group}, {args.device}"] = (
                sd15_real_rows(args.real_ranks, args.device, args.group, args.resolution)
            )
        notes = ["Random weights (SD 1.5 config values; benchmarks/sd15.py). LoRA on every attention projection "
                 "(to_q, to_k, to_v, to_out.0), alpha = rank. Memory: what training adds to the UNet's own fp32 "
                 "weights (3.2 GiB): gradients and Adam's moments of the trained parameters, and for the whole "
                 "UNet the frozen copy its anchor term runs (LoRA switches the adapter off instead). Activations "
                 "are not counted.",
                 "Real step: the library's adaptation_loss (sampling down to a random step of a 2-step schedule, "
                 "a one-step prediction with gradients through the UNet, VAE decode, CIFAR ResNet-34 teacher, "
                 "the anchor's two UNet passes) + backward + Adam, after one warm-up step; fp32."]  # fmt: skip
    else:
        parser.error("give --world <digits world> or --sd15")
    result = {"title": title, "machine": machine, "command": command, "torch": torch.__version__,
              "notes": notes, "tables": tables}  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
