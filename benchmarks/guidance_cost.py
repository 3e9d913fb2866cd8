"""The cost of guidance in the digits worlds, and what each cheaper option does to the student.

For each option (``OPTIONS``: the full recipe, the tiny guidance decoder, one-pass guidance, every 2nd
step, a guidance window, and their useful combinations), on a world's shipped config:

- FLOPs per image: ``FlopCounterMode`` around ``source.generate`` of one batch (the library's own path:
  UNet passes, decoder, teacher, their backward; matmuls and convolutions, not elementwise ops);
- CPU images/s: a timed ``generate`` of ``--speed-images`` images on ``--threads`` torch threads (model
  loading excluded);
- with ``--seeds N``: the quality-cost front. The student's private-test top-1 at the FINAL epoch for
  seeds ``0 .. N-1``, each (option, seed) one resumable ``run_experiment`` under ``--out/runs`` (the
  bench's ``row_config`` / ``run_row``), at ``--images-per-class`` with the config's KD recipe.
  Every such run reads the private test split once: it is a reported row.

Writes ``<out>/<world>.json`` and ``<out>/<world>.md``. The SD 1.5 counts of the same options are
``benchmarks/synth_throughput.py --full-arch-check`` (``results/speed/cpu_sd15_flops.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from diffdfkd.bench import WORLD_CONFIGS, Row, row_config, run_row  # noqa: E402
from diffdfkd.config import load_config, replace  # noqa: E402
from diffdfkd.experiment import resolve_config  # noqa: E402
from diffdfkd.models import build_teacher  # noqa: E402
from diffdfkd.synth.run import SynthPlan  # noqa: E402
from diffdfkd.synth.sources import SOURCES  # noqa: E402
from diffdfkd.worlds import teacher_spec  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "guidance_cost"
BASELINES = RESULTS_DIR.parent / "baselines"
# The recipe the front compares the guidance options on: the shipped config without the adversarial
# term (the front was measured before the online student became the default; its cost, about 4 % of a
# guided batch, is the same for every option). The efficacy bench's `diffdfkd` row is this recipe.
RECIPE = {"guidance.adv_weight": 0.0}
TINY = {"generator.guidance_decoder": "pipeline"}
OPTIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "tiny_decoder": TINY,
    "one_pass": {"guidance.mode": "one_pass"},
    "tiny_one_pass": {**TINY, "guidance.mode": "one_pass"},
    "every2": {"guidance.every": 2},
    "tiny_every2": {**TINY, "guidance.every": 2},
    "window": {"guidance.window_end": 0.5},
    "tiny_window": {**TINY, "guidance.window_end": 0.5},
    "one_pass_every2": {"guidance.mode": "one_pass", "guidance.every": 2},
}


def build_source(config: Any) -> tuple[Any, SynthPlan]:
    teacher = build_teacher(teacher_spec(config))
    source = SOURCES.create(config.synth.source, config=resolve_config(config), teacher=teacher)
    return source, SynthPlan.from_config(config, len(teacher.class_names))


def flops_per_image(config: Any) -> float:
    """Counted FLOPs of one batch of ``config``'s synthesis, per image."""
    source, plan = build_source(config)
    indices = plan.indices(0)
    counter = FlopCounterMode(display=False)
    with counter:
        source.generate(indices, plan.targets(indices))
    return counter.get_total_flops() / len(indices)


def images_per_second(config: Any, images: int) -> float:
    """Images/s of ``source.generate`` over the first batches holding ``images`` images."""
    source, plan = build_source(config)
    batches = max(1, math.ceil(images / plan.batch_size))
    start = time.perf_counter()
    for b in range(batches):
        indices = plan.indices(b)
        source.generate(indices, plan.targets(indices))
    return batches * plan.batch_size / (time.perf_counter() - start)


def student_runs(world: str, base: Any, name: str, seeds: int, budget: dict, out: Path) -> list[float]:
    """Private-test top-1 (final epoch) of option ``name`` for seeds ``0 .. seeds-1`` (resumable).

    ``full`` is ``RECIPE``, the efficacy bench's ``diffdfkd_no_adv`` row at the same budget: its runs
    live (and are reused, or made) under ``results/baselines/<world>-<N>/runs/diffdfkd_no_adv``."""
    row = Row(name, "guidance-cost", f"{world}: {name}", OPTIONS[name])
    if name == "full":
        row = Row("diffdfkd_no_adv", "ablation", f"{world}: the shipped config without the adversarial term")
        # as baselines_digits.py names it (relative to the repository root), so the saved out_dir matches
        out = Path(os.path.relpath(BASELINES / f"{world}-{budget['synth.images_per_class']}"))
    return [
        run_row(row, row_config(base, row, seed, budget, out), progress=False)["student_top1"]
        for seed in range(seeds)
    ]


def markdown(report: dict[str, Any]) -> str:
    full = report["options"].get("full") or next(iter(report["options"].values()))
    lines = [
        f"# Guidance cost in the `{report['world']}` world",
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']}, {report['threads']} torch thread(s); "
        "timings on a CPU shared with other jobs are upper bounds.",
        "FLOPs: counted (FlopCounterMode, matmuls and convolutions) on one batch of the config's own path. "
        "Student: lenet5 distilled as in the config, private-test top-1 at the final epoch, mean +- sample std "
        f"over seeds, {report['budget']} per run.",
        "",
        "| option | MFLOP / image | vs full | images/s (CPU) | student top-1 % | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["options"].items():
        accs = r.get("student_top1", [])
        acc = (
            f"{100 * statistics.mean(accs):.1f} +- {100 * (statistics.stdev(accs) if len(accs) > 1 else 0.0):.1f}"
            if accs
            else "not run"
        )
        lines.append(
            f"| {name} | {r['flops_per_image'] / 1e6:.1f} | {r['flops_per_image'] / full['flops_per_image']:.2f}x "
            f"| {r['images_per_s']:.2f} | {acc} | {len(accs)} |"
        )
    return "\n".join(lines) + "\n"


def plot_front(report: dict[str, Any], path: Path) -> None:
    """The quality-cost front: student top-1 (mean +- sample std over seeds) against FLOPs vs full."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = report["options"]["full"]["flops_per_image"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in report["options"].items():
        accs = r.get("student_top1", [])
        if not accs:
            continue
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        x = r["flops_per_image"] / full
        ax.errorbar(x, 100 * statistics.mean(accs), yerr=100 * std, fmt="o", capsize=3)
        ax.annotate(name, (x, 100 * statistics.mean(accs)), textcoords="offset points", xytext=(5, 5))
    ax.axvline(0.5, color="grey", linestyle=":", label="half the FLOPs")
    ax.set_xlabel("FLOPs per image vs the full recipe")
    ax.set_ylabel("student top-1 % (PRIVATE test)")
    ax.set_title(f"{report['world']}: {report['budget']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--world", default="digits", choices=sorted(WORLD_CONFIGS), help="world")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), help="options")
    parser.add_argument("--speed-images", type=int, default=40, help="images timed per option")
    parser.add_argument("--seeds", type=int, default=0, help="student seeds per option (0: cost only)")
    parser.add_argument("--images-per-class", type=int, default=100, help="synthetic images per class")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for <world>.json / .md and runs/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out) / args.world
    base = replace(load_config(WORLD_CONFIGS[args.world]), **RECIPE)
    budget = {"synth.images_per_class": args.images_per_class}
    json_path = Path(args.out) / f"{args.world}.json"
    report = json.loads(json_path.read_text()) if json_path.is_file() else {"options": {}}
    report.update(
        world=args.world,
        command="python benchmarks/guidance_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        threads=args.threads,
        budget=f"{args.images_per_class} images per class",
    )
    for name in args.options:
        config = replace(base, **OPTIONS[name])
        record = report["options"].get(name, {})
        record["flops_per_image"] = flops_per_image(config)
        record["images_per_s"] = images_per_second(config, args.speed_images)
        if args.seeds:
            record["student_top1"] = student_runs(args.world, base, name, args.seeds, budget, out)
        report["options"][name] = record
        print(f"[guidance-cost] {args.world} {name}: {record}", flush=True)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        (Path(args.out) / f"{args.world}.md").write_text(markdown(report))
    if "full" in report["options"]:
        plot_front(report, Path(args.out) / f"{args.world}_front.png")
    return report


if __name__ == "__main__":
    main()
