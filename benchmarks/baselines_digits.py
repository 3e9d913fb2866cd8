"""The data-free baselines at full strength in the digits world, at the demo's budget (issue 11).

Rows of ``diffdfkd.bench`` (the CLI's own ``run_experiment`` per row and seed: synthesis through the
source interface and the resumable writer, the demo's KD recipe from ``configs/digits.yaml``, one
evaluation on the PRIVATE test split, final epoch), with 100 images per class (1,000 per run) and one
torch thread:

- ``deepinversion`` in batches of 100 (5 mixing groups of 20: the same images as batches of 20 up to
  float rounding, and about 3x cheaper per image on a CPU);
- ``fast`` in rounds of 20 (its batch is its round, so the batch size is part of the method);
- ``diffdfkd`` (with ``--with-diffdfkd``) as shipped, for the goal lines.

Every (row, seed) keeps its folder under ``<out>/runs``: a rerun skips finished runs and resumes
unfinished ones. Then ``<out>/results.{json,md}``, ``accuracy.png`` and ``grids/`` are written for
every finished (row, seed) found under ``<out>/runs`` (``--report-only``: just that).

Usage: python benchmarks/baselines_digits.py [--seeds 3] [--out benchmarks/results/baselines] [--with-diffdfkd]
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402

from diffdfkd.bench import (  # noqa: E402
    ROWS,
    WORLD_CONFIGS,
    aggregate,
    goal_check,
    machine,
    run_bench,
    run_record,
    write_outputs,
)
from diffdfkd.config import load_config, to_dict  # noqa: E402

BUDGET = {"synth.images_per_class": 100}
BUDGET_NOTE = """\
The demo's budget (`configs/digits.yaml`: 1,000 images, lenet5, 60 epochs of KD, batch 64, T 4), rows run
by `benchmarks/baselines_digits.py` with one torch thread on the shared 2-core CPU (other helpers' jobs
ran beside them, so the seconds are upper bounds and vary with the load). DeepInversion runs in batches
of 100 (5 mixing groups of 20: its images do not depend on the batch), Fast in rounds of 20 (its batch
is its round)."""
ROW_BUDGETS = {"deepinversion": {**BUDGET, "synth.batch_size": 100}, "fast": BUDGET, "diffdfkd": BUDGET}


def saved_report(out: Path, names: list[str]) -> dict:
    """The comparison of every finished (row, seed) under ``out/runs``, read from the run folders."""
    rows = []
    for row in [r for r in ROWS if r.name in names]:
        folders = sorted((out / "runs" / row.name).glob("seed*"))
        done = [f for f in folders if (f / "results.json").is_file()]
        runs = [run_record(json.loads((f / "results.json").read_text()), f) for f in done]
        if runs:
            rows.append(aggregate(row, runs))
    return {
        "world": "digits",
        "seeds": max((r["seeds"] for r in rows), default=0),
        "quick": False,
        "budget": {**BUDGET, "synth.batch_size (deepinversion only)": 100},
        "budget_note": BUDGET_NOTE,
        "base_config": to_dict(load_config(WORLD_CONFIGS["digits"])),
        "machine": machine(1),
        "wall_seconds_this_call": 0.0,
        "goal": goal_check(rows),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row")
    parser.add_argument("--out", default="benchmarks/results/baselines", help="output folder")
    parser.add_argument("--with-diffdfkd", action="store_true", help="also run the diffdfkd row")
    parser.add_argument("--only", default="", help="comma-separated rows to run now (default: all)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = ["deepinversion", "fast", "diffdfkd"]
    wanted = args.only.split(",") if args.only else names[: 3 if args.with_diffdfkd else 2]
    for name in [] if args.report_only else wanted:
        run_bench(world="digits", seeds=args.seeds, out=args.out, only=[name], budget=ROW_BUDGETS[name],
                  progress=False, threads=1)  # fmt: skip
    write_outputs(Path(args.out), saved_report(Path(args.out), names))


if __name__ == "__main__":
    main()
