"""DiffDFKD against the data-free baselines at full strength, in one digits world at one budget.

Rows of ``diffdfkd.bench`` (the CLI's own ``run_experiment`` per row and seed: synthesis through the
source interface and the resumable writer, the world's KD recipe from its shipped config, one
evaluation on the PRIVATE test split, final epoch), with ``--images-per-class`` (default 100: 1,000
images per run) and one torch thread:

- ``diffdfkd``: DiffDFKD as shipped (with the adversarial term against the online student);
- ``diffdfkd_no_adv``: the same without the adversarial term;
- ``diffdfkd_paper``: the paper's published recipe (raw step 1, CE 1, BN 0.1, adversarial 1);
- ``unguided``: the same generator and prompts without the teacher (DM-KD style);
- ``deepinversion`` in batches of 100 (5 mixing groups of 20: the same images as batches of 20 up to
  float rounding, and about 3x cheaper per image on a CPU);
- ``fast`` in rounds of 20 (its batch is its round, so the batch size is part of the method), and
  ``fast_adv``: the same with Fast's online adversarial term;
- ``cmi``: CMI, a generator per batch with the contrastive loss and the adversarial term (weight 0.5);
- ``kd_real``: KD on the real PRIVATE training images (the upper bound; not data-free).

Every (row, seed) keeps its folder under ``<out>/runs``: a rerun skips finished runs and resumes
unfinished ones (a folder whose saved config lacks the row's overrides, as one made under a row's
former name, is not reported for it). Then ``<out>/results.{json,md}``, ``accuracy.png`` and ``grids/`` are written for
every finished (row, seed) found under ``<out>/runs`` (``--report-only``: just that).

Usage: python benchmarks/baselines_digits.py [--world digits] [--images-per-class 100] [--seeds 3]
[--only diffdfkd,fast] [--out benchmarks/results/baselines/<world>-<images per class>]
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402

import torch  # noqa: E402

from diffdfkd.bench import (  # noqa: E402
    ABLATION,
    NO_ADV,
    ROW_NAMES_VERSION,
    ROWS,
    WORLD_CONFIGS,
    Row,
    aggregate,
    comparison,
    machine,
    overrides_hold,
    read_results,
    row_config,
    run_record,
    run_row,
    select_rows,
    write_outputs,
)
from diffdfkd.check.folders import saved_config  # noqa: E402
from diffdfkd.config import ConfigError, load_config, to_dict  # noqa: E402
from diffdfkd.worlds.looks import LOOK_PROMPTS  # noqa: E402

logger = logging.getLogger("baselines_digits")

ROW_NAMES = [
    "diffdfkd",
    "diffdfkd_no_adv",
    "diffdfkd_paper",
    "unguided",
    "deepinversion",
    "fast",
    "fast_adv",
    "cmi",
    "kd_real",
]
# Issue 14's levers as rows at the same budget (run with --only; reported when present).
LEVER_ROWS = ["diffdfkd_raw_step", "diffdfkd_look_prompt", "diffdfkd_adapted"]
ADAPTED_GENERATOR = "adapted_generator"  # in the out folder: adapt_generator.py --save
LOOK_PROMPT = LOOK_PROMPTS["scan"].replace("{name}", "{label}")  # the teacher's look, named


def script_rows(out: Path) -> tuple[Row, ...]:
    """This bench's rows beside ``diffdfkd.bench.ROWS``: DiffDFKD with prompts naming the teacher's look (digits only), and DiffDFKD on the generator adapted to the
    teacher (made beforehand in ``out``)."""
    adapted = Row(
        "diffdfkd_adapted",
        ABLATION,
        "DiffDFKD as shipped (with the adversarial term) on a generator whose UNet was first adapted to the "
        "teacher without data (benchmarks/adapt_generator.py, 150 steps of the guidance's CE + BN loss on "
        "one-step predictions, seed 0, used by every seed)",
        {"guidance.adv_weight": 1.0, "generator.path": str(out / ADAPTED_GENERATOR)},
    )
    look_prompt = Row(
        "diffdfkd_look_prompt",
        ABLATION,
        "DiffDFKD without the adversarial term, with look-naming class prompts (a user who knows the "
        "teacher's domain: low-resolution scans)",
        {**NO_ADV, "generator.prompt_template": LOOK_PROMPT},
    )
    return look_prompt, adapted


BUDGET_NOTE = """\
The world's shipped KD recipe (lenet5, 60 epochs, batch 64, T 4) at {per_class} synthetic images per class
for every data-free row (kd_real: every real PRIVATE training image), rows run by
`benchmarks/baselines_digits.py` with one torch thread on the shared 2-core CPU (other jobs ran beside
them, so the seconds are upper bounds and vary with the load). DeepInversion runs in batches of 100 (5
mixing groups of 20: its images do not depend on the batch), Fast in rounds of 20 (its batch is its
round)."""


def row_budget(name: str, per_class: int) -> dict:
    """The shared budget, plus DeepInversion's batch of 100 (its images do not depend on the batch)."""
    budget = {"synth.images_per_class": per_class}
    return {**budget, "synth.batch_size": 100} if name == "deepinversion" else budget


def committed_rows(out: Path) -> dict[str, dict]:
    """The rows of ``out/results.json`` as committed, by today's name (read before any run rewrites the file)."""
    path = out / "results.json"
    return {r["name"]: r for r in read_results(path)["rows"]} if path.is_file() else {}


def saved_report(out: Path, names: list[str], world: str, per_class: int, committed: dict[str, dict]) -> dict:
    """The comparison of every finished (row, seed) under ``out/runs``, read from the run folders.

    Run folders are not committed: a row with no finished run here keeps its entry from ``committed``
    (the results.json found before this call ran anything; marked ``kept_from_results_json``), so a
    fresh clone that reruns one row does not drop the others."""
    rows = []
    for row in [r for r in (*ROWS, *script_rows(out)) if r.name in names]:
        folders = sorted((out / "runs" / row.name).glob("seed*"))
        done = [
            f for f in folders
            if (f / "results.json").is_file() and overrides_hold(row, saved_config(f / "config.yaml"))
        ]  # fmt: skip
        runs = [run_record(json.loads((f / "results.json").read_text()), f) for f in done]
        if runs:
            rows.append(aggregate(row, runs))
        elif row.name in committed:
            rows.append({**committed[row.name], "kept_from_results_json": True})
    return {
        "world": world,
        "seeds": max((r["seeds"] for r in rows), default=0),
        "quick": False,
        "budget": {"synth.images_per_class": per_class, "synth.batch_size (deepinversion only)": 100},
        "budget_note": BUDGET_NOTE.format(per_class=per_class),
        "base_config": to_dict(load_config(WORLD_CONFIGS[world])),
        "machine": machine(1),
        "wall_seconds_this_call": 0.0,
        "comparison": comparison(rows),
        "row_names": ROW_NAMES_VERSION,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default="digits", choices=sorted(WORLD_CONFIGS), help="world")
    parser.add_argument("--images-per-class", type=int, default=100, help="synthetic images per class")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row")
    parser.add_argument("--out", default="", help="output folder (default: results/baselines/<world>-<N>)")
    parser.add_argument("--only", default="", help=f"comma-separated rows to run now (default: {ROW_NAMES})")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out or f"benchmarks/results/baselines/{args.world}-{args.images_per_class}")
    wanted = args.only.split(",") if args.only else ROW_NAMES
    unknown = sorted(set(wanted) - set(ROW_NAMES + LEVER_ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {ROW_NAMES + LEVER_ROWS}")
    adapted_done = (out / ADAPTED_GENERATOR / "adapt_info.json").is_file()  # written last
    if "diffdfkd_adapted" in wanted and not args.report_only and not adapted_done:
        parser.error(
            f"diffdfkd_adapted needs {out / ADAPTED_GENERATOR}: make it first with "
            f"python benchmarks/adapt_generator.py --world {args.world} --save {out / ADAPTED_GENERATOR}"
        )
    committed = committed_rows(out)  # read once, before any run: the report keeps what has no run here
    rows = (*ROWS, *script_rows(out))
    try:
        todo = (
            [] if args.report_only else [select_rows([name], False, rows, args.world)[0] for name in wanted]
        )
    except ConfigError as error:
        parser.error(str(error))
    base = load_config(WORLD_CONFIGS[args.world])
    torch.set_num_threads(1)

    def report() -> None:
        names = ROW_NAMES + LEVER_ROWS
        write_outputs(out, saved_report(out, names, args.world, args.images_per_class, committed))

    for row in todo:
        for seed in range(args.seeds):
            config = row_config(base, row, seed, row_budget(row.name, args.images_per_class), out)
            summary = run_row(row, config, overwrite=False, progress=False)
            logger.info("%s seed %d: student top-1 %.4f", row.name, seed, summary["student_top1"])
            report()  # after every run: every row, committed ones included, stays in the report
    report()


if __name__ == "__main__":
    main()
