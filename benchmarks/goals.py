"""The efficacy issue's goal block, each goal measured or marked as not run, from the committed benches.

Reads the comparison folders of ``benchmarks/baselines_digits.py`` (``results/baselines/<world>-<N>/
results.json``), the emoji world's committed per-run records (``EMOJI_RUNS``: its runs were made by
``diffdfkd bench --world emoji`` and ``benchmarks/emoji_pool.py`` and are scored in the files named there;
``results/emoji-500/runs.json``, ``benchmarks/emoji_pool.py``'s record, for 500 images per class) and the demo record
(``results/demo/results.json``, written by ``make bench-demo``), and writes ``results/goals.json`` and
``results/goals.md``:

"DiffDFKD" is the row of the shipped config (kind ``ours``: ``diffdfkd``; results files written before the
rows were renamed are read under today's names, see ``diffdfkd.bench.read_results``). The goals:

1. ``emoji`` at 100 images per class: DiffDFKD >= 3 points above the strongest full-strength data-free
   baseline (``fast``, ``fast_adv``, ``cmi``, ``deepinversion``, ``unguided``), the difference >= 2
   standard errors;
2. ``emoji`` at 500 per class: DiffDFKD within 1 point of ``kd_real`` (KD on all the real PRIVATE
   training images, drawn by class to the budget's number of images: the same KD steps) or above it;
3. ``digits`` at 1,000 and 2,000 images: DiffDFKD's mean at least Fast's;
4. ``digits-mnist`` at 1,000 images: DiffDFKD >= 3 points above DeepInversion and within 2 points of Fast;
5. the demo: student >= 0.95 in at most 15 minutes on 2 cores;

and the budget curves (every row measured at each budget; both worlds also drawn to
``results/budget_curve.png``).

Rows that never read the generator (``deepinversion``, ``fast``, ``fast_adv``, ``cmi``, ``kd_real``) have
the same config in both digits worlds apart from the world's name (same teacher, private split, seeds and
recipe), so their runs in one world stand for both; such a borrowed row is named with the folder it comes
from. Differences of means come with their standard error over seeds.

Usage: python benchmarks/goals.py
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from diffdfkd.bench import mean_difference, read_results

RESULTS = Path(__file__).resolve().parent / "results"
GENERATOR_FREE = ("deepinversion", "fast", "fast_adv", "cmi", "kd_real")
DATA_FREE_BASELINES = ("deepinversion", "fast", "fast_adv", "cmi", "unguided")
# The full-strength data-free baselines.
EMOJI_BASELINES = ("fast", "fast_adv", "cmi", "deepinversion", "unguided")
# Where the emoji world's runs at 100 images per class are recorded: row -> (file under results/, the
# row's name there). The shipped config's seeds are the adversarial-weight sweep's ``diffdfkd_adv3``
# runs (tuning/emoji-adv-weight.md); a (row, seed) found in two files is taken once, from the first.
POOL = "emoji-pool/levers/pooled_agreement.json"  # {"runs": [{"row", "seed", "student_top1_private_test"}]}
BENCH_SEEDS = "emoji/public_agreement.json"  # {row: [{"seed", "student_top1_private_test"}]}
EMOJI_RUNS: dict[str, list[tuple[str, str]]] = {
    "diffdfkd": [(POOL, "diffdfkd_adv3")],
    "diffdfkd_no_adv": [(POOL, "diffdfkd_no_adv"), ("emoji-pool/runs.json", "diffdfkd_no_adv")],
    "diffdfkd_paper": [(BENCH_SEEDS, "diffdfkd_paper"), ("emoji-pool/runs.json", "diffdfkd_paper")],
    "fast": [(BENCH_SEEDS, "fast"), (POOL, "fast")],
    "fast_adv": [("emoji-pool/runs.json", "fast_adv")],
    "cmi": [(POOL, "cmi"), (BENCH_SEEDS, "cmi")],
    "deepinversion": [(POOL, "deepinversion"), (BENCH_SEEDS, "deepinversion")],
    "unguided": [(POOL, "unguided"), (BENCH_SEEDS, "unguided")],
    "kd_real": [(BENCH_SEEDS, "kd_real"), (POOL, "kd_real"), ("emoji-pool/runs.json", "kd_real")],
}
WORLDS = ("digits", "digits-mnist")
CURVE_BUDGETS = (100, 200, 500)  # images per class
REAL_IMAGES = {"digits": "1,200", "emoji": "653"}  # kd_real's real images, drawn to each budget
CURVE_ROWS = (
    "diffdfkd",
    "diffdfkd_no_adv",
    "diffdfkd_paper",
    "fast",
    "fast_adv",
    "cmi",
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


def recorded_runs(path: Path, name: str) -> dict[int, float]:
    """seed -> PRIVATE top-1 of row ``name`` in one of the emoji world's run records (``EMOJI_RUNS``)."""
    data = json.loads(path.read_text())
    runs = data["runs"] if "runs" in data else [{**r, "row": row} for row, rs in data.items() for r in rs]
    return {int(r["seed"]): float(r["student_top1_private_test"]) for r in runs if r["row"] == name}


def seeds_row(name: str, kind: str, accuracy: dict[int, float]) -> dict[str, Any]:
    """A row as the bench's ``aggregate`` writes it, from its per-seed accuracies."""
    values = [accuracy[k] for k in sorted(accuracy)]
    return {"name": name, "kind": kind, "seeds": len(values), "seed_ids": sorted(accuracy),
            "student_top1_mean": statistics.fmean(values),
            "student_top1_std": statistics.stdev(values) if len(values) > 1 else 0.0}  # fmt: skip


def emoji_rows(per_class: int, root: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """The emoji rows at ``per_class`` images per class: at 100 from ``EMOJI_RUNS``; otherwise from
    ``results/emoji-<per_class>/runs.json``. ``kd_real`` is measured at each budget, never borrowed from
    another: its real images are drawn by class to the budget's number, so a larger budget gives its
    student more KD steps, as it gives every other row's."""
    if per_class != 100:
        path = root / f"emoji-{per_class}" / "runs.json"  # benchmarks/emoji_pool.py's record
        names = sorted({r["row"] for r in json.loads(path.read_text())["runs"]}) if path.is_file() else []
        kinds = {"diffdfkd": "ours", "kd_real": "upper_bound"}
        return {n: seeds_row(n, kinds.get(n, "baseline"), recorded_runs(path, n)) for n in names}
    rows = {}
    for name, sources in EMOJI_RUNS.items():
        accuracy: dict[int, float] = {}
        for file, recorded in sources:
            if (root / file).is_file():
                accuracy = recorded_runs(root / file, recorded) | accuracy  # the first file wins a seed
        if accuracy:
            kind = "ours" if name == "diffdfkd" else "upper_bound" if name == "kd_real" else "baseline"
            rows[name] = seeds_row(name, kind, accuracy)
    return rows


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``a - b`` of the student means (points) and its standard error over seeds."""
    points, se = mean_difference(a, b)
    return {"points": 100 * points, "se_points": 100 * se, "seeds": min(a["seeds"], b["seeds"])}


def strongest(rows: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any] | None:
    present = [rows[n] for n in names if n in rows]
    return max(present, key=lambda r: r["student_top1_mean"]) if present else None


def margin_check(ours: dict | None, other: dict | None, at_least: float, name: str) -> dict[str, Any]:
    """``ours - other >= at_least`` points, or not measured."""
    if ours is None or other is None:
        return {"goal": f">= {at_least:+g} points over {name}", "measured": False, "met": None}
    d = difference(ours, other)
    return {"goal": f">= {at_least:+g} points over {name}", "measured": True, "against": other["name"],
            **d, "met": d["points"] >= at_least}  # fmt: skip


def ours(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the shipped config (kind ``ours``), if measured."""
    return next((r for r in rows.values() if r["kind"] == "ours"), None)


def beyond_noise_check(ours: dict | None, other: dict | None, at_least: float, name: str) -> dict[str, Any]:
    """``ours - other >= at_least`` points and at least 2 standard errors, or not measured."""
    line = margin_check(ours, other, at_least, name) | {
        "goal": f">= {at_least:+g} points over {name}, >= 2 s.e."
    }
    if line["measured"]:
        line["met"] = line["met"] and line["points"] >= 2 * line["se_points"]
    return line


def behind_check(ours: dict | None, other: dict | None, at_most: float, name: str) -> dict[str, Any]:
    """``other - ours <= at_most`` points (``at_most`` 0: ours at least level), or not measured."""
    unit = "point" if at_most == 1 else "points"
    goal = f"mean at least {name}'s" if at_most == 0 else f"at most {at_most:g} {unit} below {name}"
    if ours is None or other is None:
        return {"goal": goal, "measured": False, "met": None}
    d = difference(ours, other)
    return {"goal": goal, "measured": True, "against": other["name"], **d, "met": -d["points"] <= at_most}


def goal_block(root: Path = RESULTS) -> dict[str, Any]:
    e100, e500 = emoji_rows(100, root), emoji_rows(500, root)
    d100, d200, m100 = (
        rows_at("digits", 100, root),
        rows_at("digits", 200, root),
        rows_at("digits-mnist", 100, root),
    )
    emoji = {
        "100_per_class": beyond_noise_check(
            ours(e100), strongest(e100, EMOJI_BASELINES), 3, "the strongest data-free baseline"
        ),
        "500_per_class": behind_check(ours(e500), e500.get("kd_real"), 1, "kd_real"),
    }
    digits = {
        f"{10 * n}_images": behind_check(ours(rows), rows.get("fast"), 0, "fast")
        for n, rows in ((100, d100), (200, d200))
    }
    mnist = {
        "over_deepinversion": margin_check(ours(m100), m100.get("deepinversion"), 3, "deepinversion"),
        "near_fast": behind_check(ours(m100), m100.get("fast"), 2, "fast"),
    }
    demo_path = root / "demo" / "results.json"
    demo: dict[str, Any] = {"goal": "student >= 0.95 in <= 15 min on 2 cores", "measured": False, "met": None}
    if demo_path.is_file():
        record = json.loads(demo_path.read_text())
        minutes = record["wall_seconds"] / 60
        demo |= {"measured": True, "student_top1": record["student_top1"], "minutes": minutes,
                 "met": record["student_top1"] >= 0.95 and minutes <= 15}  # fmt: skip
    return {"emoji": emoji, "digits": digits, "digits-mnist": mnist, "demo": demo}


def budget_curve(root: Path = RESULTS, world: str = "digits") -> dict[str, list[dict[str, Any]]]:
    """Per row of ``CURVE_ROWS``, its points in ``world``: images, mean, std and seeds at each budget
    of ``CURVE_BUDGETS`` where it was measured (borrowed generator-free rows included)."""
    classes = 12 if world == "emoji" else 10
    curve: dict[str, list[dict[str, Any]]] = {}
    for per_class in CURVE_BUDGETS:
        rows = emoji_rows(per_class, root) if world == "emoji" else rows_at(world, per_class, root)
        for name, row in rows.items():
            if name in CURVE_ROWS:
                point = {"images": classes * per_class, "mean": row["student_top1_mean"],
                         "std": row["student_top1_std"], "seeds": row["seeds"]}  # fmt: skip
                curve.setdefault(name, []).append(point)
    return {name: curve[name] for name in CURVE_ROWS if name in curve}


def curve_markdown(curve: dict[str, list[dict[str, Any]]], world: str = "digits") -> list[str]:
    images = sorted({p["images"] for points in curve.values() for p in points})
    real = REAL_IMAGES[world]
    lines = ["", f"Budget curve in `{world}` (student top-1 % on the PRIVATE test split, mean +- std over seeds; "
             f"kd_real: KD on the {real} private training images, drawn to each budget's number):", "",
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


def plot_curves(curves: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> Any:
    """One panel per world of ``curves``: each row's top-1 over its budgets, kd_real as a level; a row
    has one colour in every panel. Returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (world, curve) in zip(axes[0], curves.items(), strict=True):
        for name, points in curve.items():
            real = name == "kd_real"  # not data-free: the real private images, black and dashed
            label = f"kd_real ({REAL_IMAGES[world]} private images)" if real else name
            ax.errorbar([p["images"] for p in points], [100 * p["mean"] for p in points],
                        yerr=[100 * p["std"] for p in points], marker="o", capsize=3, label=label,
                        color="black" if real else f"C{CURVE_ROWS.index(name)}",
                        linestyle="--" if real else "-")  # fmt: skip
        ax.set_xscale("log")
        budgets = sorted({p["images"] for points in curve.values() for p in points})
        ax.set_xticks(budgets, [f"{n:,}" for n in budgets], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("synthetic images")
        ax.set_ylabel("student top-1 %, PRIVATE test")
        ax.set_title(f"{world}: budget curve (error bars: std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def leaves(block: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The goal lines of ``block`` (dicts holding a ``goal``), with their dotted paths."""
    if "goal" in block:
        return [(prefix, block)]
    return [item for key, value in block.items() for item in leaves(value, f"{prefix}.{key}".strip("."))]


def markdown(block: dict[str, Any], curves: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = ["# The efficacy issue's goals", "", "Written by `python benchmarks/goals.py` from the committed benches.", "",
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
    for world, curve in curves.items():
        lines += curve_markdown(curve, world)
    lines += ["", "![budget curve](budget_curve.png)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    block = goal_block()
    curves = {world: budget_curve(world=world) for world in ("emoji", "digits")}
    (RESULTS / "goals.json").write_text(json.dumps({**block, "budget_curves": curves}, indent=2) + "\n")
    (RESULTS / "goals.md").write_text(markdown(block, curves))
    plot_curves(curves, RESULTS / "budget_curve.png")
    print(markdown(block, curves))


if __name__ == "__main__":
    main()
