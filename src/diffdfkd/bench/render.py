"""The bench's outputs: ``results.json``, ``results.md`` (the table, per-class accuracy, look mix, the
comparison, the budget), ``accuracy.png`` (bars with the std over seeds) and ``grids/<row>.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffdfkd.bench.rows import ABLATION, BASELINE, OURS, UPPER_BOUND
from diffdfkd.bench.statistics import compute_seconds, mean
from diffdfkd.report import image_grid
from diffdfkd.synth.dataset import load_synthetic


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def per_key_table(rows: list[dict[str, Any]], key: str, cell: Callable[[float | None], str]) -> list[str]:
    """Markdown lines of a rows x entries table of each row's dict ``key`` (rows without it left out)."""
    present = [r for r in rows if r.get(key)]
    if not present:
        return []
    columns = list(present[0][key])
    lines = ["| row | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {r['name']} | " + " | ".join(cell(r[key].get(c)) for c in columns) + " |" for r in present]
    return lines


def comparison_lines(block: dict[str, Any]) -> list[str]:
    """Markdown lines of ``statistics.comparison``'s block: differences of means +- their standard error."""
    lines = []
    if "margin_over_best_baseline" in block:
        lines.append(
            f"- {block['ours']} minus the strongest data-free baseline ({block['best_baseline']}): "
            f"{100 * block['margin_over_best_baseline']:+.1f} ± {100 * block['margin_se']:.1f} points (standard "
            f"error over seeds); synthesis cost {_seconds(block.get('ours_s_per_image'))} s/image against "
            f"{_seconds(block.get('best_baseline_s_per_image'))} s/image"
        )
    if "gap_to_kd_real" in block:
        lines.append(
            f"- KD on real data minus {block['ours']}: {100 * block['gap_to_kd_real']:+.1f} ± "
            f"{100 * block['gap_se']:.1f} points"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """``results.md``: the table, per-class accuracy, look mix, the comparison, the budget and how it
    was measured."""
    header = ["row", "kind", "student top-1 % (mean ± std)", "teacher acc. % on synth", "teacher p(target)",
              "teacher confidence", "BN-statistics distance", "student-teacher agreement % (held-out synth)",
              "synthesis s (total per run)", "synthesis s/image", "KD s"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rows"]:
        lines.append(
            f"| {r['name']} | {r['kind']} | {_pct(r['student_top1_mean'])} ± {_pct(r['student_top1_std'])} "
            f"| {_pct(r['teacher_accuracy'])} | {r['teacher_prob_target']:.3f} | {r['teacher_confidence']:.3f} "
            f"| {_seconds(r.get('bn_distance'))} | {_pct(r['holdout_agreement'])} | {r['synthesis_s']:.0f} "
            f"| {_seconds(r['synthesis_s_per_image'])} | {r['kd_s']:.0f} |"
        )
    per_class = per_key_table(report["rows"], "student_per_class_mean", _pct)
    look_mix = per_key_table(report["rows"], "look_mix_mean", _share)
    if look_mix:
        title = (
            "## Look mix of the synthetic images (the world's PUBLIC look classifier; share, mean over seeds)"
        )
        look_mix = [title, "", *look_mix, ""]
    teacher = mean([r["teacher_top1"] for r in report["rows"]])
    compared = comparison_lines(report.get("comparison", {}))
    m = report["machine"]
    budget = ", ".join(f"`{k}={v}`" for k, v in report["budget"].items())
    descriptions = [f"- **{r['name']}** ({r['kind']}): {r['description']}; overrides "
                    f"`{json.dumps(r['overrides'])}`" for r in report["rows"]]  # fmt: skip
    grids = [f"- {r['name']}:\n\n  ![{r['name']}](grids/{r['name']}.png)\n" for r in report["rows"]]
    return "\n".join(
        [
            f"# Bench: the {report['world']} world{' (quick smoke run)' if report['quick'] else ''}",
            "",
            f"Student top-1 on the PRIVATE test split, final epoch, mean ± std over {report['seeds']} seed(s); "
            f"teacher top-1 {_pct(teacher)} %. Nothing is selected on the test split. Teacher numbers are "
            "measured on each source's synthetic images as saved; for class-free unguided diffusion the "
            "target classes carry no meaning (its labels come from the teacher through KD).",
            "",
            *lines,
            "",
            "![accuracy](accuracy.png)",
            "",
            "BN-statistics distance: DeepInversion's BatchNorm-statistics distance of each run's whole "
            "synthetic set to the teacher's running statistics (lower: closer to the teacher's training "
            "data's features). Synthesis s/image: the run's synthesis seconds over its images.",
            "",
            "## Per-class student top-1 % (PRIVATE test split, mean over seeds)",
            "",
            *per_class,
            "",
            *look_mix,
            "## Comparison",
            "",
            *(compared or ["- (needs the diffdfkd row and a baseline or kd_real)"]),
            "",
            "## Rows",
            "",
            *descriptions,
            "",
            "## Budget",
            "",
            f"Shared by every row: {budget} (on the world's shipped config); seeds 0..{report['seeds'] - 1}.",
            "",
            report.get("budget_note") or "Every row gets the same budget.",
            "",
            f"Compute of the runs reported (from their own records): {compute_seconds(report):.0f} s in all.",
            "",
            f"Measured on: {m['processor']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
            f"{m['cuda'] or 'no GPU'}; wall time of the last call: {report['wall_seconds_this_call']:.0f} s "
            "(finished runs are skipped on a rerun). Synthesis seconds include loading the models.",
            "",
            "## Synthetic images (seed 0, one row per class)",
            "",
            *grids,
            "",
        ]
    )


def accuracy_chart(report: dict[str, Any], path: Path) -> Path:
    """Bars of the student's mean top-1 per row with the std over seeds; the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    colours = {OURS: "tab:red", ABLATION: "tab:orange", BASELINE: "tab:blue", UPPER_BOUND: "tab:gray"}
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * len(rows), 4.0))
    ax.bar(
        range(len(rows)),
        [100 * r["student_top1_mean"] for r in rows],
        yerr=[100 * r["student_top1_std"] for r in rows],
        color=[colours[r["kind"]] for r in rows],
        capsize=4,
    )
    teacher = ax.axhline(100 * mean([r["teacher_top1"] for r in rows]), color="black", linestyle="--")
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("student top-1 % (private test, final epoch)")
    ax.set_title(f"{report['world']}: mean ± std over {report['seeds']} seed(s)", fontsize=9)
    ax.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()] + [teacher],
        labels=[*colours, "teacher"],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_grids(report: dict[str, Any], out: Path) -> None:
    """``grids/<row>.png``: seed 0's final images of each row, one row of up to 8 per class.

    A row without a local seed-0 run (kept from a committed results.json) keeps its committed grid."""
    from PIL import Image

    (out / "grids").mkdir(parents=True, exist_ok=True)
    for r in report["rows"]:
        if not (out / "runs" / r["name"] / "seed0" / "synth").is_dir():
            continue
        data = load_synthetic(out / "runs" / r["name"] / "seed0" / "synth", kinds=("final",))
        grid = image_grid(data.images, data.labels, len(data.class_names))
        Image.fromarray(grid).save(out / "grids" / f"{r['name']}.png")


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    """``results.json``, ``results.md``, ``accuracy.png`` and ``grids/`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    accuracy_chart(report, out / "accuracy.png")
    write_grids(report, out)
