"""Issue 14's goal block: the three goals, each measured or marked as not run, from the committed benches.

Reads the comparison folders of ``benchmarks/baselines_digits.py`` (``results/baselines/<world>-<N>/
results.json``) and the demo record (``results/demo/results.json``, written by ``make bench-demo``), and
writes ``results/goals.json`` and ``results/goals.md``:

"DiffDFKD" is the row of the shipped config (kind ``ours``: ``diffdfkd``; results files written before the
rows were renamed are read under today's names, see ``diffdfkd.bench.read_results``).

1. ``digits`` at 100 images per class: DiffDFKD mean >= 0.95 and >= 3 points above the strongest
   data-free baseline; at 500 per class: at most 1 point below ``kd_real`` and >= 3 points above the
   strongest baseline;
2. ``digits-mnist`` at 100 per class: DiffDFKD mean >= 0.95 and >= 3 points above DeepInversion;
3. the demo: student >= 0.95 in at most 15 minutes on 2 cores;
4. the budget curve in ``digits`` (1,000 / 2,000 / 5,000 images): every row measured at each budget,
   also drawn to ``results/budget_curve.png``.

Rows that never read the generator (``deepinversion``, ``fast``, ``fast_adv``, ``cmi``, ``kd_real``) have the same config in both
digits worlds apart from the world's name (same teacher, private split, seeds and recipe), so their runs
in one world stand for both; such a borrowed row is named with the folder it comes from. Differences of
means come with their standard error over seeds.

Usage: python benchmarks/goals.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffdfkd.bench import mean_difference, read_results

RESULTS = Path(__file__).resolve().parent / "results"
GENERATOR_FREE = ("deepinversion", "fast", "fast_adv", "cmi", "kd_real")
DATA_FREE_BASELINES = ("deepinversion", "fast", "fast_adv", "unguided")
WORLDS = ("digits", "digits-mnist")
CURVE_BUDGETS = (100, 200, 500)  # images per class
CURVE_ROWS = (
    "diffdfkd",
    "diffdfkd_no_adv",
    "diffdfkd_paper",
    "fast",
    "fast_adv",
    "deepinversion",
    "unguided",
    "kd_real",
)


def rows_at(world: str, per_class: int, root: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """The rows measured in ``world`` at ``per_class`` images per class, plus generator-free rows
    borrowed from the other world at the same budget (marked ``borrowed_from``)."""
    rows: dict[str, dict[str, Any]] = {}
    for source in (world, *[w for w in WORLDS if w != world]):
        path = root / "baselines" / f"{source}-{per_class}" / "results.json"
        if not path.is_file():
            continue
        for row in read_results(path)["rows"]:
            if row["name"] in rows or (source != world and row["name"] not in GENERATOR_FREE):
                continue
            rows[row["name"]] = row if source == world else {**row, "borrowed_from": path.parent.name}
    return rows


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``a - b`` of the student means (points) and its standard error over seeds."""
    points, se = mean_difference(a, b)
    return {"points": 100 * points, "se_points": 100 * se, "seeds": min(a["seeds"], b["seeds"])}


def strongest(rows: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any] | None:
    present = [rows[n] for n in names if n in rows]
    return max(present, key=lambda r: r["student_top1_mean"]) if present else None


def mean_line(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {"measured": False}
    line = {"measured": True, "mean": row["student_top1_mean"], "std": row["student_top1_std"],
            "seeds": row["seeds"]}  # fmt: skip
    return line | ({"borrowed_from": row["borrowed_from"]} if "borrowed_from" in row else {})


def margin_check(ours: dict | None, other: dict | None, at_least: float, name: str) -> dict[str, Any]:
    """``ours - other >= at_least`` points, or not measured."""
    if ours is None or other is None:
        return {"goal": f">= {at_least:+g} points over {name}", "measured": False, "met": None}
    d = difference(ours, other)
    return {"goal": f">= {at_least:+g} points over {name}", "measured": True, "against": other["name"],
            **d, "met": d["points"] >= at_least}  # fmt: skip


def level_check(row: dict | None, level: float) -> dict[str, Any]:
    line = mean_line(row)
    return {"goal": f"mean >= {level}", **line, "met": line["mean"] >= level if row else None}


def ours(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the shipped config (kind ``ours``), if measured."""
    return next((r for r in rows.values() if r["kind"] == "ours"), None)


def goal_block() -> dict[str, Any]:
    d100, d500, m100 = rows_at("digits", 100), rows_at("digits", 500), rows_at("digits-mnist", 100)
    best100, best500 = strongest(d100, DATA_FREE_BASELINES), strongest(d500, DATA_FREE_BASELINES)
    kd500 = d500.get("kd_real")
    gap = None
    if ours(d500) and kd500:
        gap = difference(kd500, ours(d500))
    goal1 = {
        "100_per_class": {
            "level": level_check(ours(d100), 0.95),
            "over_strongest_baseline": margin_check(ours(d100), best100, 3, "the strongest data-free baseline"),
        },
        "500_per_class": {
            "within_1_point_of_kd_real": {"goal": "kd_real - diffdfkd <= 1 point", "measured": gap is not None,
                                          **(gap or {}), "met": None if gap is None else gap["points"] <= 1},
            "over_strongest_baseline": margin_check(ours(d500), best500, 3, "the strongest data-free baseline"),
        },
    }  # fmt: skip
    goal2 = {
        "level": level_check(ours(m100), 0.95),
        "over_deepinversion": margin_check(ours(m100), m100.get("deepinversion"), 3, "deepinversion"),
    }
    demo_path = RESULTS / "demo" / "results.json"
    goal3: dict[str, Any] = {
        "goal": "student >= 0.95 in <= 15 min on 2 cores",
        "measured": False,
        "met": None,
    }
    if demo_path.is_file():
        demo = json.loads(demo_path.read_text())
        minutes = demo["wall_seconds"] / 60
        goal3 |= {"measured": True, "student_top1": demo["student_top1"], "minutes": minutes,
                  "met": demo["student_top1"] >= 0.95 and minutes <= 15}  # fmt: skip
    return {"digits": goal1, "digits-mnist": goal2, "demo": goal3}


def budget_curve(root: Path = RESULTS) -> dict[str, list[dict[str, Any]]]:
    """Per row of ``CURVE_ROWS``, its points in ``digits``: images, mean, std and seeds at each budget
    of ``CURVE_BUDGETS`` where it was measured (borrowed generator-free rows included)."""
    curve: dict[str, list[dict[str, Any]]] = {}
    for per_class in CURVE_BUDGETS:
        for name, row in rows_at("digits", per_class, root).items():
            if name in CURVE_ROWS:
                point = {"images": 10 * per_class, "mean": row["student_top1_mean"],
                         "std": row["student_top1_std"], "seeds": row["seeds"]}  # fmt: skip
                curve.setdefault(name, []).append(point)
    return {name: curve[name] for name in CURVE_ROWS if name in curve}


def curve_markdown(curve: dict[str, list[dict[str, Any]]]) -> list[str]:
    images = sorted({p["images"] for points in curve.values() for p in points})
    lines = ["", "Budget curve in `digits` (student top-1 % on the PRIVATE test split, mean +- std over seeds; "
             "kd_real: always the 1,200 private training images):", "",
             "| row | " + " | ".join(f"{n:,} images" for n in images) + " |", "|---|" + "---|" * len(images)]  # fmt: skip
    for name, points in curve.items():
        at = {p["images"]: p for p in points}
        cells = [_point(at[n]) if n in at else "-" for n in images]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _point(point: dict[str, Any], unit: str = "") -> str:
    """``mean +- std (n seeds)`` in percent; one seed has no spread to show."""
    if point["seeds"] == 1:
        return f"{100 * point['mean']:.1f}{unit} (1 seed)"
    return f"{100 * point['mean']:.1f} +- {100 * point['std']:.1f}{unit} ({point['seeds']} seeds)"


def plot_curve(curve: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curve.items():
        if name == "kd_real":  # the real training set at every budget: a level, not a curve
            ax.axhline(
                100 * points[0]["mean"], color="black", linestyle="--", label="kd_real (1,200 private images)"
            )
            continue
        ax.errorbar([p["images"] for p in points], [100 * p["mean"] for p in points],
                    yerr=[100 * p["std"] for p in points], marker="o", capsize=3, label=name)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("synthetic images")
    ax.set_ylabel("student top-1 %, PRIVATE test")
    ax.set_title("digits: budget curve (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def leaves(block: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The goal lines of ``block`` (dicts holding a ``goal``), with their dotted paths."""
    if "goal" in block:
        return [(prefix, block)]
    return [item for key, value in block.items() for item in leaves(value, f"{prefix}.{key}".strip("."))]


def markdown(block: dict[str, Any], curve: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["# Issue 14's goals", "", "Written by `python benchmarks/goals.py` from the committed benches.", "",
             "| goal | what | measured | met |", "|---|---|---|---|"]  # fmt: skip
    for path, line in leaves(block):
        if not line["measured"]:
            shown = "not run"
        elif "points" in line:
            spread = f" +- {line['se_points']:.1f}" if line["se_points"] else ""
            shown = f"{line['points']:+.1f}{spread} points"
            shown += f" (vs {line['against']})" if "against" in line else ""
        elif "mean" in line:
            shown = _point(line, " %")
        else:
            shown = f"{100 * line['student_top1']:.1f} % in {line['minutes']:.1f} min"
        met = {True: "yes", False: "NO", None: "-"}[line["met"]]
        met += " (1 seed; the goal asks 3)" if line.get("seeds") == 1 else ""
        lines.append(f"| {path} | {line['goal']} | {shown} | {met} |")
    lines += curve_markdown(curve) + ["", "![budget curve](budget_curve.png)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    block, curve = goal_block(), budget_curve()
    (RESULTS / "goals.json").write_text(json.dumps({**block, "budget_curve": curve}, indent=2) + "\n")
    (RESULTS / "goals.md").write_text(markdown(block, curve))
    plot_curve(curve, RESULTS / "budget_curve.png")
    print(markdown(block, curve))


if __name__ == "__main__":
    main()
