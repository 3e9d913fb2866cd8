"""Single runs of the emoji world's bench rows, one per ``ROW:SEED``, into one bench folder.

How the runs of ``benchmarks/results/emoji-pool/`` were made (the bench's own ``row_config`` and
``run_row``, the world's bench budget of 100 images per class unless ``--images-per-class`` says
otherwise, one torch thread; a rerun skips a
finished run and resumes an unfinished one), so that they can be run two at a time on a 2-core machine
and scored together by ``pooled_agreement.py``. Besides ``diffdfkd.bench.ROWS``: ``diffdfkd_adapted``,
the shipped config on a generator adapted to the teacher without data, made first with
``diffdfkd adapt-generator --config configs/emoji.yaml --out <out>/adapted_generator`` (150 steps,
lr 1e-4, anchor 1, seed 0; used by every seed); ``fast_adv3`` and ``fast_adv10``, Fast with its adversarial
term at weight 3 and 10 (the weights DiffDFKD's was chosen among in this world,
``results/tuning/emoji-fast-adv-weight.md``); ``diffdfkd_cfg2``, the shipped config at CFG 2
(``results/tuning/emoji-cfg-scale.md``); ``diffdfkd_recurrence2``, the shipped config with each guided
step taken twice (``results/tuning/emoji-recurrence.md``); ``diffdfkd_ddim10``, the shipped config under
DDIM with 10 steps, half the guided cost (``results/tuning/emoji-ddim-steps.md``).

After every run ``<out>/runs.json`` records each finished run of the folder (row, seed, PRIVATE top-1,
per-class top-1, synthesis s/image, the teacher's accuracy on the synthetic set, its style mix and its
BN-statistics distance): the run folders are not committed, this file is (``goals.py`` reads it).

Usage: python benchmarks/emoji_pool.py [--out benchmarks/results/emoji-pool] [--images-per-class N]
ROW:SEED [ROW:SEED ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from diffdfkd.bench import (  # noqa: E402
    ABLATION,
    BASELINE,
    WORLD_CONFIGS,
    Row,
    bench_budget,
    row_config,
    run_row,
    select_rows,
)
from diffdfkd.bench.run import finished_runs  # noqa: E402
from diffdfkd.config import ConfigError, load_config  # noqa: E402
from diffdfkd.files import replace_atomically  # noqa: E402

ADAPTED_GENERATOR = "adapted_generator"


def adapted_row(out: Path) -> Row:
    """The shipped config on the generator adapted to the teacher in ``out``."""
    return Row(
        "diffdfkd_adapted",
        ABLATION,
        "DiffDFKD as shipped on a generator whose UNet was first adapted to the teacher without data "
        "(diffdfkd adapt-generator: 150 steps of the guidance's CE + BN loss on one-step predictions, seed 0)",
        {"generator.path": str(out / ADAPTED_GENERATOR)},
        worlds=("emoji",),
    )


def fast_adv_row(weight: float) -> Row:
    """``fast_adv`` at adversarial weight ``weight``: the lever DiffDFKD's weight was chosen on, for Fast."""
    return Row(
        f"fast_adv{weight:g}",
        BASELINE,
        f"Fast with its online adversarial term at weight {weight:g} (a candidate for the emoji world's weight)",
        {"synth.source": "fast", "guidance.adv_weight": weight},
        worlds=("emoji",),
    )


def cfg_row(scale: float) -> Row:
    """The shipped config sampling at CFG ``scale`` (``results/tuning/emoji-cfg-scale.md``)."""
    return Row(
        f"diffdfkd_cfg{scale:g}",
        ABLATION,
        f"DiffDFKD as shipped at CFG {scale:g} (a candidate for the emoji world's scale under guidance)",
        {"generator.cfg_scale": scale},
        worlds=("emoji",),
    )


def recurrence_row(times: int) -> Row:
    """The shipped config taking each guided step ``times`` times (``results/tuning/emoji-recurrence.md``)."""
    return Row(
        f"diffdfkd_recurrence{times}",
        ABLATION,
        f"DiffDFKD as shipped with each guided step taken {times} times (self-recurrence; "
        f"{times}x the guided synthesis cost)",
        {"guidance.recurrence": times},
        worlds=("emoji",),
    )


def sampler_row(scheduler: str, steps: int) -> Row:
    """The shipped config sampling with ``scheduler`` in ``steps`` steps (``results/tuning/emoji-ddim-steps.md``)."""
    return Row(
        f"diffdfkd_{scheduler}{steps}",
        ABLATION,
        f"DiffDFKD as shipped, sampled by {scheduler} in {steps} steps (the shipped: DDPM, 20)",
        {"generator.scheduler": scheduler, "generator.num_steps": steps},
        worlds=("emoji",),
    )


def recorded_runs(record: Path) -> dict[tuple[str, int], dict]:
    """(row, seed) -> run of a ``runs.json`` (none if absent); ``ValueError`` naming the file if damaged."""
    if not record.is_file():
        return {}
    try:
        return {(run["row"], int(run["seed"])): run for run in json.loads(record.read_text())["runs"]}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{record} is not a runs record ({error!r}): repair or remove it") from error


def record_runs(out: Path) -> None:
    """``out/runs.json``: every finished run under ``out/runs``, in the ``{"runs": [...]}`` form
    ``goals.py`` reads (as ``pooled_agreement.py`` writes it). The run folders are not committed, so a
    record already in the file whose folder is absent here (a fresh checkout) is kept, not dropped."""
    record = out / "runs.json"
    runs = recorded_runs(record)
    for folder in finished_runs(out):
        result = json.loads((folder / "results.json").read_text())
        class_names = json.loads((folder / "synth" / "classes.json").read_text())
        run = {
            "row": folder.parent.name,
            "seed": int(folder.name.removeprefix("seed")),
            "student_top1_private_test": result["student_top1"],
            "student_per_class_private_test": dict(
                zip(class_names, result["student_eval"]["per_class"], strict=True)
            ),
            "synthesis_s_per_image": result["synthesis_s_per_image"],
            "synthetic_images": result["synthetic_images"],
            "teacher_accuracy_on_synthetic": result.get("teacher_accuracy_on_synthetic"),
            "style_mix_of_synthetic": result.get("look_mix_of_synthetic"),
            "bn_distance_of_synthetic": result.get("bn_distance_of_synthetic"),
        }  # fmt: skip
        runs[run["row"], run["seed"]] = run
    ordered = [runs[key] for key in sorted(runs)]
    text = json.dumps({"runs": ordered}, indent=1) + "\n"
    replace_atomically(record, lambda tmp: Path(tmp).write_text(text))  # two runs may finish at once


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="benchmarks/results/emoji-pool", help="the bench folder")
    parser.add_argument("--images-per-class", type=int, help="the budget (default: the bench's, 100)")
    parser.add_argument("runs", nargs="+", help="ROW:SEED, e.g. diffdfkd:0")
    args = parser.parse_args()
    out = Path(args.out)
    rows = {
        row.name: row
        for row in (
            adapted_row(out),
            fast_adv_row(3.0),
            fast_adv_row(10.0),
            cfg_row(2.0),
            recurrence_row(2),
            sampler_row("ddim", 10),
        )
    }
    try:
        specs = [(name, int(seed)) for name, seed in (spec.split(":") for spec in args.runs)]
    except ValueError:
        parser.error(f"runs are ROW:SEED with a whole-number seed, got {' '.join(args.runs)}")
    if (
        "diffdfkd_adapted" in {name for name, _ in specs}
        and not (out / ADAPTED_GENERATOR / "adapt_info.json").is_file()
    ):
        parser.error(f"diffdfkd_adapted needs {out / ADAPTED_GENERATOR}: make it first (see --help)")
    try:  # every row resolved before the first run: a bad name is a usage error, not a late failure
        runs = [
            (rows.get(name) or select_rows([name], False, world="emoji")[0], seed) for name, seed in specs
        ]
        budget = bench_budget("emoji", images_per_class=args.images_per_class)
        recorded_runs(out / "runs.json")  # a damaged record fails here, not after the first run
    except (ConfigError, ValueError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    base = load_config(WORLD_CONFIGS["emoji"])
    try:
        for row, seed in runs:
            summary = run_row(
                row, row_config(base, row, seed, dict(budget), out), overwrite=False, progress=True
            )
            print(f"{row.name} seed {seed}: student top-1 {summary['student_top1']:.4f}", flush=True)
            record_runs(out)
    except ConfigError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
