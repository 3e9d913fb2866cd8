"""A synthetic-only signal for the emoji bench: each student's agreement with the teacher on the synthetic
images of the OTHER methods (by default the data-free baselines' sets), beside its PRIVATE top-1.

The public signal (``public_agreement.py``: agreement on real PUBLIC emoji) does not rank the methods as
the PRIVATE split does; the efficacy issue suggests agreement on a pool of every method's synthetic images
instead. A student never saw another row's images, so each is a held-out test of how well it copies the
teacher where the teacher's inputs are hard and varied. A student is scored on every pool row except its
own (mean over those rows, each row's seeds pooled). No PRIVATE image is read here (the PRIVATE top-1
comes from each run's own ``results.json``).

Usage: python benchmarks/pooled_agreement.py BENCH [BENCH ...] [--pool ROW ...] [--out DIR]
Reads ``<bench>/runs/<row>/seed<k>`` (``student/student.safetensors``, ``synth/``, ``results.json``);
writes ``<out>/pooled_agreement.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from diffdfkd.config import load_config
from diffdfkd.models import create_model
from diffdfkd.models.teacher import build_teacher, load_weights
from diffdfkd.synth.dataset import load_synthetic
from diffdfkd.worlds import emoji, get_world

# The data-free baselines' sets: every DiffDFKD variant is scored on the same images, none its own.
POOL = ("fast", "cmi", "unguided")


@torch.no_grad()
def predictions(model, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i : i + 500]).argmax(1) for i in range(0, len(images), 500)])


def pooled(per_set: dict[str, float], row_of: dict[str, str], own_row: str) -> tuple[dict[str, float], float]:
    """A student's agreement per pool row (the mean over that row's sets, i.e. its seeds) leaving out its
    ``own_row``, and the mean over those rows: ``per_set`` maps a set (run) to the agreement on it."""
    per_row: dict[str, list[float]] = {}
    for run, value in per_set.items():
        if row_of[run] != own_row:
            per_row.setdefault(row_of[run], []).append(value)
    means = {row: statistics.mean(values) for row, values in per_row.items()}
    return means, statistics.mean(means.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benches", nargs="+", type=Path, help="bench folders holding runs/<row>/seed<k>")
    parser.add_argument("--pool", nargs="+", default=list(POOL), help="the rows whose images form the pool")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first bench)")
    args = parser.parse_args()
    out = args.out or args.benches[0]
    torch.set_num_threads(1)
    teacher = build_teacher(get_world("emoji").teacher_spec())
    runs = []
    for bench in args.benches:
        for run in sorted((bench / "runs").glob("*/seed*")):
            weights, results = run / "student" / "student.safetensors", run / "results.json"
            if weights.is_file() and results.is_file():
                runs.append(run)
    images, teacher_preds, students, records = {}, {}, {}, {}
    for run in runs:
        key = f"{run.parent.name}/{run.name}"
        config = load_config(run / "config.yaml")
        student = create_model(config.distill.student, num_classes=len(emoji.CLASS_NAMES))
        students[key] = load_weights(student, run / "student" / "student.safetensors").eval()
        summary = json.loads((run / "results.json").read_text())
        records[key] = {
            "row": run.parent.name,
            "seed": config.seed,
            "folder": str(run),
            "student_top1_private_test": summary["student_top1"],
        }
        if run.parent.name in args.pool and (run / "synth" / "classes.json").is_file():
            images[key] = load_synthetic(run / "synth", kinds=("final",)).images
            teacher_preds[key] = predictions(teacher, images[key])
    missing = sorted(set(args.pool) - {records[k]["row"] for k in images})
    if missing:
        parser.error(
            f"no finished run of pool rows {', '.join(missing)} in {', '.join(map(str, args.benches))}"
        )
    row_of = {key: record["row"] for key, record in records.items()}
    for key, student in students.items():
        per_set = {
            other: float((predictions(student, images[other]) == teacher_preds[other]).float().mean())
            for other in images
        }
        per_row, score = pooled(per_set, row_of, row_of[key])
        records[key]["agreement_per_pool_row"] = per_row
        records[key]["pooled_agreement"] = score
    out.mkdir(parents=True, exist_ok=True)
    (out / "pooled_agreement.json").write_text(json.dumps(list(records.values()), indent=2) + "\n")
    lines = [
        "# Student-teacher agreement on the OTHER rows' synthetic images beside PRIVATE top-1",
        "",
        f"`python benchmarks/pooled_agreement.py {' '.join(map(str, args.benches))}`: pool rows "
        f"{', '.join(f'`{r}`' for r in args.pool)}; `pooled` is the mean over the pool rows other than the "
        "student's own (each row's seeds pooled). One line per run; no PRIVATE image is read here.",
        "",
        "| row | seed | PRIVATE top-1 % | pooled | " + " | ".join(f"on `{r}`" for r in args.pool) + " |",
        "|---|---|---|---|" + "---|" * len(args.pool),
    ]
    for record in sorted(records.values(), key=lambda r: -r["pooled_agreement"]):
        cells = " | ".join(
            f"{record['agreement_per_pool_row'][r]:.3f}" if r in record["agreement_per_pool_row"] else "-"
            for r in args.pool
        )
        lines.append(
            f"| `{record['row']}` | {record['seed']} | {100 * record['student_top1_private_test']:.1f} | "
            f"{record['pooled_agreement']:.3f} | {cells} |"
        )
    (out / "pooled_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
