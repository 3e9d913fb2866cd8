"""The bench's numbers over seeds: a row's means (the student's with its sample std), the difference of
two rows' means with its standard error, and the comparison of the shipped row with the strongest
data-free baseline and with KD on real data (numbers only: goals and verdicts live with the benchmarks)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from diffdfkd.bench.rows import BASELINE, OURS, Row


def mean(values: list[float | None]) -> float:
    """The mean of the values that are numbers (NaN where none is)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def mean_of_dicts(dicts: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Key by key mean of ``dicts`` (None where every one is None)."""
    present = [d for d in dicts if d is not None]
    return {k: mean([d[k] for d in present]) for k in present[0]} if present else None


def aggregate(row: Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and, for the student, the sample std) over seeds of a row's runs; per class and per
    look, the mean over seeds."""
    top1 = [r["student_top1"] for r in runs]
    keys = ("teacher_top1", "teacher_accuracy", "teacher_prob_target", "teacher_confidence", "bn_distance",
            "synthesis_s", "images_per_s", "synthesis_s_per_image", "kd_s", "holdout_agreement")  # fmt: skip
    return {
        "name": row.name,
        "kind": row.kind,
        "description": row.description,
        "overrides": row.overrides,
        "seeds": len(runs),
        "student_top1_mean": mean(top1),
        "student_top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        **{k: mean([r[k] for r in runs]) for k in keys},
        "student_per_class_mean": mean_of_dicts([r["per_class"] for r in runs]),
        "look_mix_mean": mean_of_dicts([r["look_mix"] for r in runs]),
        "runs": runs,
    }


def mean_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """``a - b`` of two rows' student means, and its standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``."""
    se = math.sqrt(a["student_top1_std"] ** 2 / a["seeds"] + b["student_top1_std"] ** 2 / b["seeds"])
    return a["student_top1_mean"] - b["student_top1_mean"], se


def comparison(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The shipped row (kind ``ours``) against the strongest data-free baseline and against ``kd_real``:
    each difference of means with its standard error over seeds, and the synthesis seconds per image."""
    by_name = {r["name"]: r for r in rows}
    ours = next((r for r in rows if r["kind"] == OURS), None)
    if ours is None:
        return {}
    block: dict[str, Any] = {"ours": ours["name"], "ours_mean": ours["student_top1_mean"]}
    baselines = [r for r in rows if r["kind"] == BASELINE]
    if baselines:
        best = max(baselines, key=lambda r: r["student_top1_mean"])
        margin, se = mean_difference(ours, best)
        block |= {"best_baseline": best["name"], "margin_over_best_baseline": margin, "margin_se": se,
                  "ours_s_per_image": ours.get("synthesis_s_per_image"),
                  "best_baseline_s_per_image": best.get("synthesis_s_per_image")}  # fmt: skip
    if "kd_real" in by_name:
        gap, se = mean_difference(by_name["kd_real"], ours)
        block |= {"gap_to_kd_real": gap, "gap_se": se}
    return block


def compute_seconds(report: dict[str, Any]) -> float:
    """Synthesis + KD + evaluation seconds summed over every run of the report."""
    return sum(
        run[k] for r in report["rows"] for run in r["runs"] for k in ("synthesis_s", "kd_s", "eval_s")
        if not math.isnan(run[k])
    )  # fmt: skip
