"""Issue 14's goal block: the three goals, each measured or marked as not run, from the committed benches.

Reads the comparison folders of ``benchmarks/baselines_digits.py`` (``results/baselines/<world>-<N>/
results.json``) and the demo record (``results/demo/results.json``, written by ``make bench-demo``), and
writes ``results/goals.json`` and ``results/goals.md``:

"DiffDFKD" is the row of the shipped config (kind ``ours``: ``diffdfkd_adv``).

1. ``digits`` at 100 images per class: DiffDFKD mean >= 0.95 and >= 3 points above the strongest
   data-free baseline; at 500 per class: at most 1 point below ``kd_real`` and >= 3 points above the
   strongest baseline;
2. ``digits-mnist`` at 100 per class: DiffDFKD mean >= 0.95 and >= 3 points above DeepInversion;
3. the demo: student >= 0.95 in at most 15 minutes on 2 cores.

Rows that never read the generator (``deepinversion``, ``fast``, ``kd_real``) have the same config in both
digits worlds apart from the world's name (same teacher, private split, seeds and recipe), so their runs
in one world stand for both; such a borrowed row is named with the folder it comes from. Differences of
means come with their standard error over seeds.

Usage: python benchmarks/goals.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GENERATOR_FREE = ("deepinversion", "fast", "kd_real")
DATA_FREE_BASELINES = ("deepinversion", "fast", "unguided_class_prompt")
WORLDS = ("digits", "digits-mnist")


def rows_at(world: str, per_class: int) -> dict[str, dict[str, Any]]:
    """The rows measured in ``world`` at ``per_class`` images per class, plus generator-free rows
    borrowed from the other world at the same budget (marked ``borrowed_from``)."""
    rows: dict[str, dict[str, Any]] = {}
    for source in (world, *[w for w in WORLDS if w != world]):
        path = RESULTS / "baselines" / f"{source}-{per_class}" / "results.json"
        if not path.is_file():
            continue
        for row in json.loads(path.read_text())["rows"]:
            if row["name"] in rows or (source != world and row["name"] not in GENERATOR_FREE):
                continue
            rows[row["name"]] = row if source == world else {**row, "borrowed_from": path.parent.name}
    return rows


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``a - b`` of the student means (points) and its standard error over seeds."""
    se = math.sqrt(a["student_top1_std"] ** 2 / a["seeds"] + b["student_top1_std"] ** 2 / b["seeds"])
    return {"points": 100 * (a["student_top1_mean"] - b["student_top1_mean"]), "se_points": 100 * se}


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


def leaves(block: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The goal lines of ``block`` (dicts holding a ``goal``), with their dotted paths."""
    if "goal" in block:
        return [(prefix, block)]
    return [item for key, value in block.items() for item in leaves(value, f"{prefix}.{key}".strip("."))]


def markdown(block: dict[str, Any]) -> str:
    lines = ["# Issue 14's goals", "", "Written by `python benchmarks/goals.py` from the committed benches.", "",
             "| goal | what | measured | met |", "|---|---|---|---|"]  # fmt: skip
    for path, line in leaves(block):
        if not line["measured"]:
            shown = "not run"
        elif "points" in line:
            shown = f"{line['points']:+.1f} +- {line['se_points']:.1f} points"
            shown += f" (vs {line['against']})" if "against" in line else ""
        elif "mean" in line:
            shown = f"{100 * line['mean']:.1f} +- {100 * line['std']:.1f} % ({line['seeds']} seeds)"
        else:
            shown = f"{100 * line['student_top1']:.1f} % in {line['minutes']:.1f} min"
        met = {True: "yes", False: "NO", None: "-"}[line["met"]]
        lines.append(f"| {path} | {line['goal']} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    block = goal_block()
    (RESULTS / "goals.json").write_text(json.dumps(block, indent=2) + "\n")
    (RESULTS / "goals.md").write_text(markdown(block))
    print(markdown(block))


if __name__ == "__main__":
    main()
