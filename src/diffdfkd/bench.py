"""The comparison in one command: DiffDFKD against its ablations and the baselines, over seeds.

Every row is data: a name and config overrides on the world's shipped config (``configs/digits.yaml``,
the file ``diffdfkd run`` uses). Every row and seed runs the CLI's own code path (``run_experiment``:
synthesize through the one source interface and writer, KD with the one trainer, evaluate once on the
PRIVATE test split), with the same synthetic-image budget per class and the same KD recipe; only the
"from scratch" row swaps KD for cross-entropy without a teacher (``distill.kd=false``). Reported
accuracies are the final epoch's; nothing is selected on the test split.

``run_bench`` writes ``results.json``, ``results.md``, ``accuracy.png`` (bars with the std over seeds)
and ``grids/<row>.png`` (seed 0's images, one row per class) into ``out``, and keeps every run's folder
under ``out/runs/<row>/seed<k>``: rerunning skips finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffdfkd.check import saved_config
from diffdfkd.config import ConfigError, ExperimentConfig, from_dict, load_config, replace, to_dict
from diffdfkd.evaluate import bn_statistics_distance
from diffdfkd.models import build_teacher
from diffdfkd.pipeline import run_experiment, world_look_mix
from diffdfkd.report import image_grid
from diffdfkd.runtime import changed_keys
from diffdfkd.synth.dataset import load_synthetic, read_rows
from diffdfkd.worlds import teacher_spec
from diffdfkd.worlds.looks import LOOK_PROMPTS

logger = logging.getLogger(__name__)

OURS, ABLATION, BASELINE, UPPER_BOUND = (
    "ours",
    "ablation",
    "data-free baseline",
    "upper bound (not data-free)",
)


@dataclass(frozen=True)
class Row:
    """One line of the comparison: ``overrides`` (dotted keys) on the shipped config."""

    name: str
    kind: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


CLASS_PROMPT = "a handwritten digit {label}"
LOOK_PROMPT = LOOK_PROMPTS["scan"].replace("{name}", "{label}")  # the teacher's look, named
# The adversarial term is DiffDFKD's (teacher guidance with an online student): rows without teacher
# guidance, and other sources, turn it off.
NO_ADV = {"guidance.adv_weight": 0.0}
UNGUIDED = {**NO_ADV, "guidance.mode": "none", "cutmix.enabled": False}
# The paper's recipe (docs/method.md, "The paper's recipe"): the raw step of size 1 on grad L, CE 1, BN 0.1
# charged per image (the paper's batch of one); the authors' DomainNet script adds the adversarial term at
# weight 1 (their CIFAR-10 script runs BN 0 and adversarial 0).
PAPER = {
    "guidance.step_norm": "none",
    "guidance.step_size": 1.0,
    "guidance.ce_weight": 1.0,
    "guidance.bn_weight": 0.1,
    "guidance.bn_per": "sample",
    "guidance.adv_weight": 1.0,
}

ROWS: tuple[Row, ...] = (
    Row(
        "diffdfkd",
        OURS,
        "DiffDFKD as shipped (the world's config): class prompts, CE + BN guidance with the step "
        "normalised per image, same-class Latent CutMix, and the adversarial term against an online "
        "student (CMI / Fast lineage), weight 1",
        {"guidance.adv_weight": 1.0},
    ),
    Row(
        "diffdfkd_no_adv",
        ABLATION,
        "DiffDFKD without the adversarial term: class prompts, CE + BN guidance, same-class Latent CutMix",
        NO_ADV,
    ),
    Row(
        "diffdfkd_paper",
        ABLATION,
        "DiffDFKD by the paper's published recipe, following the authors' DomainNet script (the closest "
        "setting to a teacher whose domain the generator only partly covers): the raw guidance step "
        "z_t -= 1.0 * grad L, CE 1, BN 0.1 per image (the paper's batch of one), adversarial 1 (the world's "
        "prompts, CFG and steps)",
        PAPER,
    ),
    Row(
        "diffdfkd_classfree",
        ABLATION,
        "DiffDFKD with the paper's class-free prompt (the teacher alone carries the class)",
        {"generator.prompt_template": ""},
    ),
    Row(
        "unguided",
        BASELINE,
        "unguided diffusion, class prompts (DM-KD style), no CutMix; KD on the teacher's outputs",
        {**UNGUIDED, "generator.prompt_template": CLASS_PROMPT},
    ),
    Row(
        "unguided_classfree",
        BASELINE,
        "unguided diffusion, class-free prompt, no CutMix; KD on the teacher's outputs",
        {**UNGUIDED, "generator.prompt_template": ""},
    ),
    Row(
        "deepinversion",
        BASELINE,
        "DeepInversion by its published recipe (config.deepinversion): images optimised from N(0, 1) "
        "with Adam and a cosine lr, BN statistics charged per image, first BN x10, TV + L2 priors, jitter",
        {**NO_ADV, "synth.source": "deepinversion"},
    ),
    Row(
        "fast",
        BASELINE,
        "Fast (Fang et al. 2022, config.fast): a generator meta-learned across rounds, one round per batch, "
        "CE + BN statistics, without its online adversarial term",
        {**NO_ADV, "synth.source": "fast"},
    ),
    Row("kd_real", UPPER_BOUND, "KD on real PRIVATE training images", {**NO_ADV, "synth.source": "real"}),
    Row(
        "scratch_real",
        UPPER_BOUND,
        "student trained from scratch (CE, no teacher) on the same real images",
        {**NO_ADV, "synth.source": "real", "distill.kd": False},
    ),
    Row(
        "diffdfkd_raw_step",
        ABLATION,
        "DiffDFKD without the adversarial term, with the former raw guidance step (step 2 on grad L)",
        {**NO_ADV, "guidance.step_norm": "none", "guidance.step_size": 2.0},
    ),
    Row(
        "diffdfkd_look_prompt",
        ABLATION,
        "DiffDFKD without the adversarial term, with look-naming class prompts (a user who knows the "
        "teacher's domain: low-resolution scans)",
        {**NO_ADV, "generator.prompt_template": LOOK_PROMPT},
    ),
    Row("ce_only", ABLATION, "guidance without the BN-statistics term", {"guidance.bn_weight": 0.0}),
    Row("no_cutmix", ABLATION, "without Latent CutMix", {"cutmix.enabled": False}),
    Row(
        "cross_class_cutmix",
        ABLATION,
        "CutMix across classes, mixed soft targets",
        {"cutmix.cross_class": True},
    ),
    Row("one_pass", ABLATION, "one-pass classifier guidance (cheaper)", {"guidance.mode": "one_pass"}),
    Row(
        "detach_unet",
        ABLATION,
        "guidance gradient not through the UNet (cheaper)",
        {"guidance.mode": "detach_unet"},
    ),
)

# The rows were renamed (issue 23): results files written before carry no ``row_names`` version, and their
# ``diffdfkd`` is today's ``diffdfkd_no_adv``; ``read_results`` gives any results file today's names.
ROW_NAMES_VERSION = 2
LEGACY_ROW_NAMES = {
    "diffdfkd": "diffdfkd_no_adv",
    "diffdfkd_adv": "diffdfkd",
    "unguided_class_prompt": "unguided",
}


def current_row_names(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (what a ``results.json`` holds) with its rows, and the goal's row names, under today's names."""
    if report.get("row_names", 1) >= ROW_NAMES_VERSION:
        return report
    rename = lambda name: LEGACY_ROW_NAMES.get(name, name)  # noqa: E731
    rows = [{**r, "name": rename(r["name"])} for r in report.get("rows", [])]
    goal = {k: rename(v) if k in ("ours", "best_baseline") else v for k, v in report.get("goal", {}).items()}
    return {**report, "rows": rows, "goal": goal, "row_names": ROW_NAMES_VERSION}


def read_results(path: str | Path) -> dict[str, Any]:
    """A bench's ``results.json``, its rows under today's names (``current_row_names``)."""
    return current_row_names(json.loads(Path(path).read_text()))


def overrides_hold(row: Row, saved: dict[str, Any]) -> bool:
    """Whether a run folder's saved config (a nested dict) has every override of ``row``: a folder made
    for another row of the same name (before the renames) does not."""
    for key, value in row.overrides.items():
        node: Any = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return True


WORLD_CONFIGS = {
    world: Path(__file__).resolve().parent / "configs" / f"{world}.yaml"
    for world in ("digits", "digits-mnist")
}

# The shared budget of every row: images per class, sampler steps, DeepInversion iterations, KD recipe.
# Chosen so that `make bench-digits` (every row x 3 seeds) fits in 60 minutes on a 2-core CPU; see
# BUDGET_NOTE and the measured seconds in results.md.
FULL_BUDGET: dict[str, Any] = {
    "synth.images_per_class": 25,
    "generator.num_steps": 20,
    "distill.epochs": 60,
    "distill.batch_size": 32,
}
QUICK_BUDGET: dict[str, Any] = {
    "synth.images_per_class": 2,
    "generator.num_steps": 3,
    "deepinversion.iterations": 5,
    "fast.steps": 2,
    "distill.epochs": 1,
    "distill.batch_size": 8,
}
QUICK_ROWS = ("diffdfkd", "unguided", "deepinversion", "kd_real", "scratch_real")
BUDGET_NOTE = """\
Why this budget: `make bench-digits` must run every row for 3 seeds within 60 minutes on a 2-core CPU.
Measured with the shipped generator on this machine (2 cores shared with other jobs, 1 torch thread;
two threads made synthesis about 5x slower here, hence `threads=1`), per image of a batch of 20 at
20 DDPM steps: full guidance 0.39 s, one-pass 0.26 s, detach-UNet 0.24 s, unguided CFG 0.08 s;
DeepInversion at 200 Adam iterations 0.28 s; the real source about 0. Summed over the 12 rows that is
about 2.9 s per image per seed, so 25 images per class (260 per run: 250 rounded up to whole batches
of 20) cost about 13 min of synthesis per seed, 38 min for 3 seeds. KD (60 epochs of the 234 training
images, batch 32, teacher online) costs about 1 ms per image and epoch, about 15 s per run, 9 min for
the 36 runs; loading and evaluation add about 5 s per run: about 50 min under that contention (the
measured total of the last full run is below). The shipped config's 100
images per class would need about 3 hours, so the bench takes a quarter of it; every row gets the same
budget."""


def select_rows(only: Sequence[str] | None, quick: bool, rows: Sequence[Row] = ROWS) -> list[Row]:
    """The ``rows`` named in ``only`` (in table order), else ``QUICK_ROWS`` when ``quick``, else all."""
    names = [r.name for r in rows]
    wanted = list(only) if only else (list(QUICK_ROWS) if quick else names)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ConfigError(f"unknown bench rows {', '.join(unknown)}; choose from {', '.join(names)}")
    return [r for r in rows if r.name in wanted]


def row_config(
    base: ExperimentConfig, row: Row, seed: int, budget: dict[str, Any], out: Path
) -> ExperimentConfig:
    """``base`` + the shared ``budget`` + the row's overrides, with ``seed``, writing to ``out/runs/<row>/seed<k>``."""
    run_dir = out / "runs" / row.name / f"seed{seed}"
    return replace(
        base, **{**budget, **row.overrides, "seed": seed, "out_dir": str(run_dir), "synth.out_dir": ""}
    )


def run_row(row: Row, config: ExperimentConfig, *, overwrite: bool = False, progress: bool = True) -> dict:
    """One (row, seed): the saved summary when the run folder finished with this config, else run it."""
    out = Path(config.out_dir)
    saved = out / "config.yaml"
    results = out / "results.json"
    if results.is_file() and saved.is_file():
        if not changed_keys(saved_config(saved), to_dict(config)):
            return json.loads(results.read_text())
    return run_experiment(config, overwrite=overwrite, progress=progress)


def synthetic_stats(run_dir: Path) -> dict[str, float]:
    """The teacher on a run's synthetic set (final images): accuracy on the target classes, mean
    target-class probability and mean confidence (max probability)."""
    rows = [r for r in read_rows(run_dir / "synth") if r["kind"] == "final"]
    logits = torch.tensor([r["teacher_logits"] for r in rows])
    probs = logits.softmax(dim=1)
    classes = torch.tensor([r["class"] for r in rows])
    return {
        "teacher_accuracy": float((probs.argmax(dim=1) == classes).float().mean()),
        "teacher_prob_target": float(probs.gather(1, classes[:, None]).mean()),
        "teacher_confidence": float(probs.max(dim=1).values.mean()),
    }


def synthetic_measures(summary: dict, run_dir: Path) -> dict[str, Any]:
    """The look mix and the BN-statistics distance of a run's synthetic set, as its ``results.json``
    records them; a run made before they were recorded gets them measured on its own synthetic images
    (with the world and teacher of its ``config.yaml``), as ``run_experiment`` measures them."""
    measures = {
        "look_mix": summary.get("look_mix_of_synthetic"),
        "bn_distance": summary.get("bn_distance_of_synthetic"),
    }
    if "look_mix_of_synthetic" in summary and "bn_distance_of_synthetic" in summary:
        return measures
    saved = saved_config(run_dir / "config.yaml")
    config = from_dict(ExperimentConfig, {k: saved[k] for k in ("world", "teacher") if k in saved})
    images = load_synthetic(run_dir / "synth").images
    if "look_mix_of_synthetic" not in summary:
        measures["look_mix"] = world_look_mix(config.world, images)
    if "bn_distance_of_synthetic" not in summary:
        measures["bn_distance"] = bn_statistics_distance(build_teacher(teacher_spec(config)), images)
    return measures


def run_record(summary: dict, run_dir: Path) -> dict[str, Any]:
    """The numbers of one run that the bench reports (``run_dir``: its folder, read for what
    ``summary``, its ``results.json``, does not hold)."""
    seconds = summary.get("seconds", {})
    images = summary["synthetic_images"]
    synth_s = seconds.get("synthesis", float("nan"))
    class_names = json.loads((run_dir / "synth" / "classes.json").read_text())
    return {
        "student_top1": summary["student_top1"],
        "teacher_top1": summary["teacher_top1"],
        "per_class": dict(zip(class_names, summary["student_eval"]["per_class"], strict=True)),
        "images": images,
        "synthesis_s": synth_s,
        "images_per_s": images / synth_s if synth_s else float("nan"),
        "synthesis_s_per_image": synth_s / images if images else float("nan"),
        "kd_s": seconds.get("distillation", float("nan")),
        "eval_s": seconds.get("evaluation", float("nan")),
        "holdout_agreement": summary.get("holdout_agreement_last_epoch"),
        **synthetic_stats(run_dir),
        **synthetic_measures(summary, run_dir),
    }


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def _mean_of_dicts(dicts: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Key by key mean of ``dicts`` (None where every one is None)."""
    present = [d for d in dicts if d is not None]
    return {k: _mean([d[k] for d in present]) for k in present[0]} if present else None


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
        "student_top1_mean": _mean(top1),
        "student_top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        **{k: _mean([r[k] for r in runs]) for k in keys},
        "student_per_class_mean": _mean_of_dicts([r["per_class"] for r in runs]),
        "look_mix_mean": _mean_of_dicts([r["look_mix"] for r in runs]),
        "runs": runs,
    }


def mean_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """``a - b`` of two rows' student means, and its standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``."""
    se = math.sqrt(a["student_top1_std"] ** 2 / a["seeds"] + b["student_top1_std"] ** 2 / b["seeds"])
    return a["student_top1_mean"] - b["student_top1_mean"], se


def goal_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal: DiffDFKD >= 3 points above every data-free baseline, within 3 of KD on real data.

    Each difference of means comes with its standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` over
    seeds, so a "met" that is within the seed noise reads as such.
    """
    by_name = {r["name"]: r for r in rows}
    ours = next((r for r in rows if r["kind"] == OURS), None)
    if ours is None:
        return {}
    check: dict[str, Any] = {"ours": ours["name"], "diffdfkd": ours["student_top1_mean"]}
    baselines = [r for r in rows if r["kind"] == BASELINE]
    if baselines:
        best = max(baselines, key=lambda r: r["student_top1_mean"])
        margin, se = mean_difference(ours, best)
        check |= {"best_baseline": best["name"], "margin_over_best_baseline": margin, "margin_se": se}
        check |= {"diffdfkd_s_per_image": ours.get("synthesis_s_per_image"),
                  "best_baseline_s_per_image": best.get("synthesis_s_per_image")}  # fmt: skip
        check["ahead_by_3_points"] = margin >= 0.03
    if "kd_real" in by_name:
        gap, se = mean_difference(by_name["kd_real"], ours)
        check |= {"gap_to_kd_real": gap, "gap_se": se, "within_3_points_of_kd_real": gap <= 0.03}
    return check


def run_bench(
    world: str = "digits",
    seeds: int = 3,
    out: str | Path = "benchmarks/results/digits",
    quick: bool = False,
    only: Sequence[str] | None = None,
    *,
    base: ExperimentConfig | None = None,
    budget: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = 1,
    rows: Sequence[Row] = ROWS,
) -> dict[str, Any]:
    """Run every row of ``rows`` (or those in ``only``) for seeds ``0 .. seeds-1`` and write the
    comparison to ``out``.

    ``quick``: tiny budgets on ``QUICK_ROWS`` (a smoke run). ``base``: the config the rows modify
    (default: the world's shipped config file); ``budget``: the shared overrides (default
    ``FULL_BUDGET``, or ``QUICK_BUDGET`` when ``quick``); ``overwrite``: redo runs whose folder holds
    another config instead of refusing; ``threads``: torch CPU threads during the runs (``None``:
    leave torch's setting; the models are tiny, and on a shared 2-core machine two threads made
    synthesis about 5x SLOWER than one). Returns what ``results.json`` holds.
    """
    if world not in WORLD_CONFIGS:
        raise ConfigError(f"the bench knows the worlds {', '.join(WORLD_CONFIGS)}, not {world!r}")
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    out = Path(out)
    base = base if base is not None else load_config(WORLD_CONFIGS[world])
    budget = dict(budget if budget is not None else (QUICK_BUDGET if quick else FULL_BUDGET))
    rows = select_rows(only, quick, rows)
    start = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {row.name: [] for row in rows}
    # Seed-major: after each pass every row has one more seed, and the outputs are rewritten, so an
    # interrupted bench still compares every row.
    for seed in range(seeds):
        for row in rows:
            config = row_config(base, row, seed, budget, out)
            run_start = time.perf_counter()
            with torch_threads(threads):
                summary = run_row(row, config, overwrite=overwrite, progress=progress)
            runs[row.name].append(run_record(summary, Path(config.out_dir)))
            logger.info(
                "bench %s seed %d: student top-1 %.4f (%.0f s)",
                row.name, seed, summary["student_top1"], time.perf_counter() - run_start,
            )  # fmt: skip
        results = [aggregate(row, runs[row.name]) for row in rows]
        report = {
            "world": world,
            "seeds": seed + 1,
            "quick": quick,
            "budget": budget,
            "base_config": to_dict(base),
            "machine": machine(threads),
            "wall_seconds_this_call": round(time.perf_counter() - start, 1),
            "goal": goal_check(results),
            "row_names": ROW_NAMES_VERSION,
            "rows": results,
        }
        write_outputs(out, report)
    return report


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: unchanged), then restore them."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def machine(threads: int | None = None) -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --- outputs ---------------------------------------------------------------------------------------


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


def markdown(report: dict[str, Any]) -> str:
    """``results.md``: the table, per-class accuracy, look mix, the goal check, the budget and how it
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
        title = "## Look mix of the synthetic images (PUBLIC look classifier; share, mean over seeds)"
        look_mix = [
            title,
            "",
            "The teacher's own look is `scan` (the PRIVATE data's rendering).",
            "",
            *look_mix,
            "",
        ]
    teacher = _mean([r["teacher_top1"] for r in report["rows"]])
    goal = report["goal"]
    goal_lines = []
    if "margin_over_best_baseline" in goal:
        goal_lines.append(
            f"- DiffDFKD minus the best data-free baseline ({goal['best_baseline']}): "
            f"{100 * goal['margin_over_best_baseline']:+.1f} ± {100 * goal['margin_se']:.1f} (standard error over "
            f"seeds) points (goal: >= +3): "
            f"{'met' if goal['ahead_by_3_points'] else 'NOT met'}; synthesis cost "
            f"{_seconds(goal.get('diffdfkd_s_per_image'))} s/image against "
            f"{_seconds(goal.get('best_baseline_s_per_image'))} s/image"
        )
    if "gap_to_kd_real" in goal:
        goal_lines.append(
            f"- KD on real data minus DiffDFKD: {100 * goal['gap_to_kd_real']:+.1f} ± {100 * goal['gap_se']:.1f} "
            "points (goal: <= 3): "
            f"{'met' if goal['within_3_points_of_kd_real'] else 'NOT met'}"
        )
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
            "## Goal",
            "",
            *(goal_lines or ["- (needs the diffdfkd row and the baselines)"]),
            "",
            "## Rows",
            "",
            *descriptions,
            "",
            "## Budget",
            "",
            f"Shared by every row: {budget} (on the world's shipped config); seeds 0..{report['seeds'] - 1}.",
            "",
            report.get("budget_note", BUDGET_NOTE),
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


def compute_seconds(report: dict[str, Any]) -> float:
    """Synthesis + KD + evaluation seconds summed over every run of the report."""
    return sum(
        run[k] for r in report["rows"] for run in r["runs"] for k in ("synthesis_s", "kd_s", "eval_s")
        if not math.isnan(run[k])
    )  # fmt: skip


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
    teacher = ax.axhline(100 * _mean([r["teacher_top1"] for r in rows]), color="black", linestyle="--")
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
