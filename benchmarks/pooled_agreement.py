"""A synthetic-only signal for the emoji bench: each student's agreement with the teacher on the synthetic
images of the OTHER methods (by default the data-free baselines' sets), beside its PRIVATE top-1.

The public signal (``public_agreement.py``: agreement on real PUBLIC emoji) does not rank the methods as
the PRIVATE split does; the efficacy issue suggests agreement on a pool of every method's synthetic images
instead. A student never saw another row's images, so each is a held-out test of how well it copies the
teacher where the teacher's inputs are hard and varied. A student is scored on every pool row except its
own (mean over those rows, each row's seeds pooled). No PRIVATE image is read here (the PRIVATE top-1
comes from each run's own ``results.json``).

Two scores per student: ``pooled`` leaves out its own row only (the first signal,
``results/tuning/emoji-hardness.md``); ``foreign`` leaves out every row of its own image source (the
config's ``synth.source``: every DiffDFKD variant and ``unguided`` share the diffusion generator), which the
first signal's per-pool figures showed to favour its own family (``results/tuning/emoji-adv-weight.md``).
The cross-source check compares two rows of different sources on the pools foreign to both.

Usage: python benchmarks/pooled_agreement.py BENCH [BENCH ...] [--pool ROW ...] [--out DIR]
Reads ``<bench>/runs/<row>/seed<k>`` (``student/student.safetensors``, ``synth/``, ``results.json``);
writes ``<out>/pooled_agreement.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path

import torch

from diffdfkd.bench.run import finished_runs, run_student
from diffdfkd.config import load_config
from diffdfkd.evaluate import predict_logits
from diffdfkd.models.teacher import build_teacher
from diffdfkd.synth.dataset import load_synthetic
from diffdfkd.worlds import emoji, get_world

# The data-free baselines' sets: every DiffDFKD variant is scored on the same images, none its own.
POOL = ("fast", "cmi", "unguided", "deepinversion")


def pooled(
    per_set: dict[str, float], row_of: dict[str, str], left_out: set[str]
) -> tuple[dict[str, float], float]:
    """A student's agreement per pool row (the mean over that row's sets, i.e. its seeds) over the rows not
    in ``left_out``, and the mean over those rows: ``per_set`` maps a set (run) to the agreement on it."""
    per_row: dict[str, list[float]] = {}
    for run, value in per_set.items():
        if row_of[run] not in left_out:
            per_row.setdefault(row_of[run], []).append(value)
    means = {row: statistics.mean(values) for row, values in per_row.items()}
    return means, statistics.mean(means.values()) if means else math.nan  # nan: no pool row left


def cross_source_check(records: list[dict], source_of: dict[str, str]) -> list[dict]:
    """Each pair of seed-0 runs of different image sources whose PRIVATE difference is over 2 standard
    errors of a difference of two accuracies: does each one's agreement on the pool rows foreign to both
    order the pair as the PRIVATE split does?"""
    pairs = []
    firsts = [r for r in records if r["seed"] == 0]
    for a, b in itertools.combinations(sorted(firsts, key=lambda r: r["row"]), 2):
        if source_of[a["row"]] == source_of[b["row"]]:
            continue
        pa, pb, n = a["student_top1_private_test"], b["student_top1_private_test"], a["private_test_n"]
        margin = 2 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
        if abs(pa - pb) <= margin:
            continue
        common = [
            row
            for row in set(a["agreement_per_pool_row"]) & set(b["agreement_per_pool_row"])
            if source_of[row] not in (source_of[a["row"]], source_of[b["row"]])
        ]
        if not common:
            continue
        sa = statistics.mean(a["agreement_per_pool_row"][row] for row in common)
        sb = statistics.mean(b["agreement_per_pool_row"][row] for row in common)
        pairs.append(
            {
                "rows": [a["row"], b["row"]],
                "private_difference": pa - pb,
                "two_standard_errors": margin,
                "pool_rows": sorted(common),
                "foreign_agreement": [sa, sb],
                "ordered_as_private": (sa > sb) == (pa > pb),
            }
        )
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benches", nargs="+", type=Path, help="bench folders holding runs/<row>/seed<k>")
    parser.add_argument("--pool", nargs="+", default=list(POOL), help="the rows whose images form the pool")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first bench)")
    args = parser.parse_args()
    out = args.out or args.benches[0]
    torch.set_num_threads(1)
    teacher = build_teacher(get_world("emoji").teacher_spec())
    runs = [run for bench in args.benches for run in finished_runs(bench)]
    images, teacher_preds, students, records, source_of = {}, {}, {}, {}, {}
    for run in runs:
        key = f"{run.parent.name}/{run.name}"
        config = load_config(run / "config.yaml")
        students[key] = run_student(run, num_classes=len(emoji.CLASS_NAMES))
        summary = json.loads((run / "results.json").read_text())
        records[key] = {
            "row": run.parent.name,
            "seed": config.seed,
            "folder": str(run),
            "student_top1_private_test": summary["student_top1"],
            "private_test_n": summary["student_eval"]["n"],
        }
        source_of[run.parent.name] = config.synth.source
        if run.parent.name in args.pool and (run / "synth" / "classes.json").is_file():
            images[key] = load_synthetic(run / "synth", kinds=("final",)).images
            teacher_preds[key] = predict_logits(teacher, images[key]).argmax(1)
    missing = sorted(set(args.pool) - {records[k]["row"] for k in images})
    if missing:
        parser.error(
            f"no finished run of pool rows {', '.join(missing)} in {', '.join(map(str, args.benches))}"
        )
    row_of = {key: record["row"] for key, record in records.items()}
    for key, student in students.items():
        per_set = {
            other: float(
                (predict_logits(student, images[other]).argmax(1) == teacher_preds[other]).float().mean()
            )
            for other in images
        }
        own = row_of[key]
        per_row, score = pooled(per_set, row_of, {own})
        same_source = {row for row in source_of if source_of[row] == source_of[own]}
        records[key]["agreement_per_pool_row"] = per_row
        records[key]["pooled_agreement"] = score
        records[key]["foreign_agreement"] = pooled(per_set, row_of, same_source)[1]
    check = cross_source_check(list(records.values()), source_of)
    out.mkdir(parents=True, exist_ok=True)
    report = {"runs": list(records.values()), "source_of_row": source_of, "cross_source_check": check}
    (out / "pooled_agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Student-teacher agreement on the OTHER rows' synthetic images beside PRIVATE top-1",
        "",
        f"`python benchmarks/pooled_agreement.py {' '.join(map(str, args.benches))}`: pool rows "
        f"{', '.join(f'`{r}`' for r in args.pool)}; `pooled` is the mean over the pool rows other than the "
        "student's own, `foreign` over the pool rows of other image sources than the student's (each row's "
        "seeds pooled). One line per run; no PRIVATE image is read here.",
        "",
        "| row | source | seed | PRIVATE top-1 % | foreign | pooled | "
        + " | ".join(f"on `{r}`" for r in args.pool)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(args.pool),
    ]
    # best first; a student with no foreign pool row (nan) last
    for record in sorted(
        records.values(), key=lambda r: (math.isnan(r["foreign_agreement"]), -r["foreign_agreement"])
    ):
        cells = " | ".join(
            f"{record['agreement_per_pool_row'][r]:.3f}" if r in record["agreement_per_pool_row"] else "-"
            for r in args.pool
        )
        lines.append(
            f"| `{record['row']}` | {source_of[record['row']]} | {record['seed']} | "
            f"{100 * record['student_top1_private_test']:.1f} | {record['foreign_agreement']:.3f} | "
            f"{record['pooled_agreement']:.3f} | {cells} |"
        )
    lines += [
        "",
        "## Cross-source check",
        "",
        "Seed-0 runs of different image sources whose PRIVATE difference is over 2 standard errors, each "
        "scored on the pool rows foreign to both.",
        "",
        "| rows | PRIVATE difference (2 s.e.) | on pool rows | agreement | ordered as PRIVATE |",
        "|---|---|---|---|---|",
    ]
    for pair in check:
        a, b = pair["rows"]
        lines.append(
            f"| `{a}` vs `{b}` | {100 * pair['private_difference']:+.1f} ({100 * pair['two_standard_errors']:.1f}) | "
            f"{', '.join(pair['pool_rows'])} | {pair['foreign_agreement'][0]:.3f} vs {pair['foreign_agreement'][1]:.3f} | "
            f"{'yes' if pair['ordered_as_private'] else '**no**'} |"
        )
    (out / "pooled_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
