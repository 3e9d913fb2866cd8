"""Running the bench: every (row, seed) through the CLI's own ``run_experiment``, skipped when its folder
finished with the same config, and the numbers of each run that the bench reports.

``run_bench`` runs seed-major (after each pass every row has one more seed) and rewrites the outputs
after each pass, so an interrupted bench still compares every row.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from diffdfkd.bench.render import write_outputs
from diffdfkd.bench.rows import (
    ROW_NAMES_VERSION,
    ROWS,
    WORLD_CONFIGS,
    Row,
    bench_budget,
    row_config,
    select_rows,
)
from diffdfkd.bench.statistics import aggregate, comparison
from diffdfkd.check.folders import saved_config
from diffdfkd.config import ConfigError, ExperimentConfig, from_dict, load_config, to_dict
from diffdfkd.evaluate import bn_statistics_distance
from diffdfkd.models import build_teacher, create_model
from diffdfkd.models.teacher import load_weights
from diffdfkd.pipeline import run_experiment, world_look_mix
from diffdfkd.runtime import changed_keys
from diffdfkd.synth.dataset import load_synthetic, read_rows
from diffdfkd.worlds import teacher_spec

logger = logging.getLogger(__name__)


def run_row(row: Row, config: ExperimentConfig, *, overwrite: bool = False, progress: bool = True) -> dict:
    """One (row, seed): the saved summary when the run folder finished with this config, else run it."""
    out = Path(config.out_dir)
    saved = out / "config.yaml"
    results = out / "results.json"
    if results.is_file() and saved.is_file():
        if not changed_keys(saved_config(saved), to_dict(config)):
            return json.loads(results.read_text())
    return run_experiment(config, overwrite=overwrite, progress=progress)


def finished_runs(bench: Path) -> list[Path]:
    """A bench folder's run folders (``runs/<row>/seed<k>``) whose student and ``results.json`` are written."""
    return [
        run
        for run in sorted((bench / "runs").glob("*/seed*"))
        if (run / "student" / "student.safetensors").is_file() and (run / "results.json").is_file()
    ]


def run_student(run_dir: Path, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """The student a finished run folder holds (its config's architecture, its saved weights), in eval mode."""
    arch = load_config(run_dir / "config.yaml").distill.student
    student = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    return load_weights(student, run_dir / "student" / "student.safetensors").eval()


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
    budget_note: str = "",
) -> dict[str, Any]:
    """Run every row of ``rows`` (or those in ``only``) for seeds ``0 .. seeds-1`` and write the
    comparison to ``out``.

    ``quick``: tiny budgets on ``QUICK_ROWS`` (a smoke run). ``base``: the config the rows modify
    (default: the world's shipped config file); ``budget``: the shared overrides (default
    ``bench_budget(world, quick)``); ``overwrite``: redo runs whose folder holds
    another config instead of refusing; ``threads``: torch CPU threads during the runs (``None``:
    leave torch's setting; the models are tiny, and on a shared 2-core machine two threads made
    synthesis about 5x SLOWER than one); ``budget_note``: how the budget was chosen, for ``results.md``.
    Returns what ``results.json`` holds.
    """
    if world not in WORLD_CONFIGS:
        raise ConfigError(f"the bench knows the worlds {', '.join(WORLD_CONFIGS)}, not {world!r}")
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    out = Path(out)
    base = base if base is not None else load_config(WORLD_CONFIGS[world])
    budget = dict(budget if budget is not None else bench_budget(world, quick))
    rows = select_rows(only, quick, rows, world)
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
            "comparison": comparison(results),
            "row_names": ROW_NAMES_VERSION,
            "budget_note": budget_note,
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
