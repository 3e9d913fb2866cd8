"""FLOPs per synthetic image of each bench row of one world: the cost column beside synthesis seconds.

Counted with ``FlopCounterMode`` (matmuls, convolutions and attention, forward and backward; not
elementwise ops) around the library's own synthesis (``diffdfkd.synth.run.synthesize``) of ONE round of
the row's config at the world's bench budget, written to a temporary folder. A round is one batch: the
source's images, the teacher's labels on them as saved and, with the adversarial term, the online
student's KD steps. Rounds of one run that differ are counted once per kind and averaged over the
run's rounds:

- with the adversarial term, the online student's warm-up rounds (``online.warmup_rounds``, no
  ``L_adv``) and the later ones (counted with ``online.warmup_rounds=0``);
- Fast's meta-training warm-up rounds (``fast.warmup_rounds``): rounds whose images are not written, so
  a run of R rounds costs R + warm-up rounds (a round is counted with ``fast.warmup_rounds=0``).

Prompt encoding is part of every diffusion round. CMI's memory bank is empty in a counted round: its
contrastive matmuls against the bank (feature vectors of ``cmi.head_dim``) are not in the count.
Each counted round runs the full computation of one batch (minutes for the guided rows on one thread).

The budget is the one the world's comparison runs the row at (``row_budget``). Writes
``<out>/<world>.json`` and ``<out>/<world>.md``.

Usage: python benchmarks/row_flops.py [--world emoji] [--rows diffdfkd,fast] [--images-per-class N]
[--out benchmarks/results/cost]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from diffdfkd.bench import WORLD_CONFIGS, bench_budget, machine, row_config, select_rows  # noqa: E402
from diffdfkd.config import ConfigError, ExperimentConfig, load_config, replace  # noqa: E402
from diffdfkd.synth.run import SynthPlan, synthesize  # noqa: E402
from diffdfkd.worlds import get_world  # noqa: E402

ROWS = ("diffdfkd", "diffdfkd_paper", "diffdfkd_no_adv", "unguided", "fast", "cmi", "deepinversion")


def row_budget(world: str, name: str, images_per_class: int | None) -> dict[str, Any]:
    """The budget the world's comparison runs ``name`` at: the emoji bench's, or in the digits worlds
    ``baselines_digits.py``'s (100 per class on the shipped config; DeepInversion in batches of 100)."""
    if world == "emoji":
        return bench_budget(world, images_per_class=images_per_class)
    from baselines_digits import row_budget as digits_budget

    return digits_budget(name, images_per_class or 100)


def one_round(config: ExperimentConfig, num_classes: int, **overrides: Any) -> ExperimentConfig:
    """``config`` cut to its first batch (``overrides`` on top)."""
    batch = config.synth.batch_size
    if batch % num_classes:
        raise ConfigError(
            f"synth.batch_size={batch} is not a whole number of images per class ({num_classes})"
        )
    return replace(config, **{"synth.images_per_class": batch // num_classes, **overrides})


def counted_flops(config: ExperimentConfig) -> float:
    """FLOPs of ``synthesize(config)`` into a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        config = replace(config, out_dir=tmp)
        counter = FlopCounterMode(display=False)
        with counter:
            synthesize(config, progress=False)
        return float(counter.get_total_flops())


def row_flops(config: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """FLOPs per image of a run of ``config``, from one round of each kind (module docstring)."""
    plan = SynthPlan.from_config(config, num_classes)
    rounds, batch = plan.num_batches, plan.batch_size
    record: dict[str, Any] = {"rounds": rounds, "batch_size": batch}
    if config.guidance.adv_weight > 0:
        warmup = min(config.online.warmup_rounds, rounds)
        warm = counted_flops(one_round(config, num_classes, **{"online.warmup_rounds": 1}))
        adversarial = counted_flops(one_round(config, num_classes, **{"online.warmup_rounds": 0}))
        total = warmup * warm + (rounds - warmup) * adversarial
        record |= {"online_warmup_rounds": warmup, "warmup_round_flops": warm, "round_flops": adversarial}
    else:
        fast = config.synth.source == "fast"
        per_round = counted_flops(
            one_round(config, num_classes, **({"fast.warmup_rounds": 0} if fast else {}))
        )
        unwritten = config.fast.warmup_rounds if fast else 0
        total = (rounds + unwritten) * per_round
        record |= {"round_flops": per_round, **({"fast_warmup_rounds": unwritten} if fast else {})}
    return record | {"flops_per_image": total / (rounds * batch)}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# FLOPs per synthetic image, `{report['world']}` ({report['images_per_class']} images per class)",
        "",
        f"`{report['command']}`; {report['method']} Counts, not timings: the machine "
        f"({report['machine']['processor']}, torch {report['machine']['torch']}) does not change them.",
        "",
        "| row | GFLOP per image | rounds x batch | counted rounds (GFLOP each) |",
        "|---|---|---|---|",
    ]
    for name, r in report["rows"].items():
        counted = f"{r['round_flops'] / 1e9:.1f}"
        if "warmup_round_flops" in r:
            counted = (
                f"warm-up ({r['online_warmup_rounds']}) {r['warmup_round_flops'] / 1e9:.1f}, later {counted}"
            )
        if "fast_warmup_rounds" in r:
            counted += f" (+ {r['fast_warmup_rounds']} unwritten warm-up rounds)"
        lines.append(
            f"| `{name}` | {r['flops_per_image'] / 1e9:.2f} | {r['rounds']} x {r['batch_size']} | {counted} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default="emoji", choices=sorted(WORLD_CONFIGS))
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated bench rows")
    parser.add_argument("--images-per-class", type=int, help="the budget (default: the world's bench budget)")
    parser.add_argument("--out", default="benchmarks/results/cost", help="folder of <world>.json and .md")
    args = parser.parse_args()
    try:
        rows = select_rows(args.rows.split(","), False, world=args.world)
        budgets = {row.name: row_budget(args.world, row.name, args.images_per_class) for row in rows}
    except ConfigError as error:
        parser.error(str(error))
    if any(r.overrides.get("synth.source") == "real" for r in rows):
        parser.error("rows on real images synthesise nothing: leave them out")
    torch.set_num_threads(1)
    base = load_config(WORLD_CONFIGS[args.world])
    num_classes = len(get_world(args.world).class_names)
    report: dict[str, Any] = {
        "world": args.world,
        "images_per_class": budgets[rows[0].name]["synth.images_per_class"],
        "command": f"python benchmarks/row_flops.py --world {args.world} --rows {args.rows}",
        "machine": machine(),
        "method": (
            "FlopCounterMode (matmuls, convolutions, attention; forward and backward) around synthesize() "
            "of one round of each kind, averaged over the run's rounds (benchmarks/row_flops.py)."
        ),
        "rows": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        config = row_config(base, row, 0, budgets[row.name], out)
        report["rows"][row.name] = row_flops(config, num_classes)
        print(f"{row.name}: {report['rows'][row.name]['flops_per_image'] / 1e9:.2f} GFLOP/image", flush=True)
        (out / f"{args.world}.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / f"{args.world}.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
