"""The bench's rows: each a name and config overrides on the world's shipped config, and the budget
they share.

Names (agreed for the benches): ``diffdfkd`` is the shipped config, ``diffdfkd_no_adv`` the same without
the adversarial term, ``diffdfkd_paper`` the paper's published recipe; baselines ``unguided`` (the
world's class prompts, DM-KD style), ``unguided_classfree``, ``deepinversion``, ``fast``; the bounds
``kd_real`` and ``scratch_real``; the other rows are ablations. Results files written before the rows
were renamed are read under today's names (``read_results``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffdfkd.config import ConfigError, ExperimentConfig, replace
from diffdfkd.worlds.emoji import STYLE_PHRASES

OURS, ABLATION, BASELINE, UPPER_BOUND = (
    "ours",
    "ablation",
    "data-free baseline",
    "upper bound (not data-free)",
)


@dataclass(frozen=True)
class Row:
    """One line of the comparison: ``overrides`` (dotted keys) on the shipped config, in ``worlds`` (empty:
    every world)."""

    name: str
    kind: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    worlds: tuple[str, ...] = ()


# The adversarial term is DiffDFKD's (teacher guidance with an online student): rows without teacher
# guidance, and other sources, turn it off.
NO_ADV = {"guidance.adv_weight": 0.0}
FAST_ADV_WEIGHT = 1.0  # Fast's adversarial weight, chosen on public signals like DiffDFKD's
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
        "DiffDFKD as shipped (the world's config): its prompts, CE + BN guidance with the step normalised "
        "per image, same-class Latent CutMix, and the adversarial term against an online student (CMI / "
        "Fast lineage), at the world's weight (1 in the digits worlds, 3 in emoji)",
    ),
    Row(
        "diffdfkd_no_adv",
        ABLATION,
        "DiffDFKD without the adversarial term: CE + BN guidance, same-class Latent CutMix",
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
        "diffdfkd_adv1",
        ABLATION,
        "DiffDFKD with the adversarial term at weight 1 (the digits worlds' weight; emoji's before it moved to 3)",
        {"guidance.adv_weight": 1.0},
    ),
    Row(
        "diffdfkd_adv3",
        ABLATION,
        "DiffDFKD with the adversarial term at weight 3 (harder images: the lever the emoji figures point to)",
        {"guidance.adv_weight": 3.0},
    ),
    Row(
        "diffdfkd_adv10",
        ABLATION,
        "DiffDFKD with the adversarial term at weight 10 (the same lever pushed further)",
        {"guidance.adv_weight": 10.0},
    ),
    Row(
        "diffdfkd_online_kd60",
        ABLATION,
        "DiffDFKD with the online student trained 60 KD steps per round instead of 20 (a student closer to "
        "the final one for the adversarial term to push against)",
        {"online.kd_steps": 60},
    ),
    Row(
        "diffdfkd_ce03",
        ABLATION,
        "DiffDFKD with the cross-entropy term at weight 0.3 (less confident images), adversarial 1",
        {"guidance.adv_weight": 1.0, "guidance.ce_weight": 0.3},
    ),
    Row(
        "diffdfkd_styles",
        ABLATION,
        "DiffDFKD with style-naming prompts: each class's samples name the six PUBLIC styles in turn, as "
        "the generator's captions did ('an emoji, {label}, black line art')",
        {
            "generator.prompt_template": "an emoji, {label}, {style}",
            "generator.prompt_styles": list(STYLE_PHRASES.values()),
        },
        worlds=("emoji",),
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
        "unguided diffusion with the world's class prompts (DM-KD style), no CutMix; KD on the teacher's "
        "outputs",
        UNGUIDED,
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
        "with Adam and a cosine lr, BN statistics pooled over each mixing group (synth.group_size "
        "images), each image charged its group's distance, first BN x10, TV + L2 priors, jitter",
        {**NO_ADV, "synth.source": "deepinversion"},
    ),
    Row(
        "fast",
        BASELINE,
        "Fast (Fang et al. 2022, config.fast): a generator meta-learned across rounds, one round per batch, "
        "CE + BN statistics, without its online adversarial term",
        {**NO_ADV, "synth.source": "fast"},
    ),
    Row(
        "fast_adv",
        BASELINE,
        f"Fast with its online adversarial term (weight {FAST_ADV_WEIGHT:g}, chosen in digits on public signals: "
        "tuning/guidance_step.md), against the same online student with the same L_adv and warm-up as DiffDFKD's",
        {"synth.source": "fast", "guidance.adv_weight": FAST_ADV_WEIGHT},
    ),
    Row(
        "cmi",
        BASELINE,
        "CMI (Fang et al. 2021, config.cmi): a generator per batch with CE + BN statistics, the adversarial "
        "term against the online student (weight 0.5, as published) and the contrastive loss against a "
        "memory bank of earlier images' teacher features",
        {"synth.source": "cmi", "guidance.adv_weight": 0.5},
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
# A run folder of a row made before the renames, told apart by its saved config: ``runs/diffdfkd`` then
# held runs without the adversarial term.
LEGACY_FOLDERS = {"diffdfkd": {"guidance.adv_weight": 0.0}}

WORLD_CONFIGS = {
    world: Path(__file__).resolve().parents[1] / "configs" / f"{world}.yaml"
    for world in ("digits", "digits-mnist", "emoji")
}

# The shared budget of every row: images per class, sampler steps, DeepInversion iterations, KD recipe
# (sized for a 2-core CPU; benchmarks/digits_bench.py says how it was measured).
FULL_BUDGET: dict[str, Any] = {
    "synth.images_per_class": 25,
    "generator.num_steps": 20,
    "distill.epochs": 60,
    "distill.batch_size": 32,
}
# The emoji world's rows run at its config's sampler and KD recipe (40 epochs of batch 64, DDPM 20 steps),
# at the efficacy issue's budgets of 100 and 500 images per class.
WORLD_BUDGETS: dict[str, dict[str, Any]] = {"emoji": {"synth.images_per_class": 100}}
QUICK_BUDGET: dict[str, Any] = {
    "synth.images_per_class": 2,
    "generator.num_steps": 3,
    "deepinversion.iterations": 5,
    "fast.steps": 2,
    "cmi.iterations": 2,
    "distill.epochs": 1,
    "distill.batch_size": 8,
}
QUICK_ROWS = ("diffdfkd", "unguided", "deepinversion", "kd_real", "scratch_real")


def current_row_names(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (what a ``results.json`` holds) with its rows, and the comparison's row names, under
    today's names."""
    if report.get("row_names", 1) >= ROW_NAMES_VERSION:
        return report

    def rename(name: str) -> str:
        return LEGACY_ROW_NAMES.get(name, name)

    rows = [{**r, "name": rename(r["name"])} for r in report.get("rows", [])]
    renamed = {"row_names": ROW_NAMES_VERSION, "rows": rows}
    for key in ("goal", "comparison"):
        if key in report:
            block = report[key]
            renamed[key] = {k: rename(v) if k in ("ours", "best_baseline") else v for k, v in block.items()}
    return {**report, **renamed}


def read_results(path: str | Path) -> dict[str, Any]:
    """A bench's ``results.json``, its rows under today's names (``current_row_names``)."""
    return current_row_names(json.loads(Path(path).read_text()))


def _saved_value(saved: dict[str, Any], key: str) -> Any:
    node: Any = saved
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def overrides_hold(row: Row, saved: dict[str, Any]) -> bool:
    """Whether a run folder's saved config (a nested dict) has every override of ``row`` and is not a
    folder made for another row of the same name before the renames (``LEGACY_FOLDERS``)."""
    legacy = LEGACY_FOLDERS.get(row.name)
    if legacy and all(_saved_value(saved, key) == value for key, value in legacy.items()):
        return False
    return all(_saved_value(saved, key) == value for key, value in row.overrides.items())


def select_rows(
    only: Sequence[str] | None, quick: bool, rows: Sequence[Row] = ROWS, world: str | None = None
) -> list[Row]:
    """The ``rows`` named in ``only`` (in table order), else ``QUICK_ROWS`` when ``quick``, else all; with
    ``world``, only the rows that run in it (naming another world's row is an error)."""
    names = [r.name for r in rows]
    wanted = list(only) if only else (list(QUICK_ROWS) if quick else names)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ConfigError(f"unknown bench rows {', '.join(unknown)}; choose from {', '.join(names)}")
    chosen = [r for r in rows if r.name in wanted]
    elsewhere = [r for r in chosen if world is not None and r.worlds and world not in r.worlds]
    if only and elsewhere:
        named = ", ".join(f"{r.name} (runs in {', '.join(r.worlds)})" for r in elsewhere)
        raise ConfigError(f"bench rows {named} do not run in the {world} world")
    return [r for r in chosen if r not in elsewhere]


def row_config(
    base: ExperimentConfig, row: Row, seed: int, budget: dict[str, Any], out: Path
) -> ExperimentConfig:
    """``base`` + the shared ``budget`` + the row's overrides, with ``seed``, writing to ``out/runs/<row>/seed<k>``."""
    run_dir = out / "runs" / row.name / f"seed{seed}"
    return replace(
        base, **{**budget, **row.overrides, "seed": seed, "out_dir": str(run_dir), "synth.out_dir": ""}
    )


def bench_budget(world: str, quick: bool = False, images_per_class: int | None = None) -> dict[str, Any]:
    """The overrides every row of ``world``'s bench shares: ``QUICK_BUDGET`` when ``quick``, else the
    world's own (``WORLD_BUDGETS``, default ``FULL_BUDGET``); ``images_per_class`` replaces its budget."""
    budget = dict(QUICK_BUDGET if quick else WORLD_BUDGETS.get(world, FULL_BUDGET))
    if images_per_class is not None:
        if images_per_class < 1:
            raise ConfigError(f"images_per_class must be >= 1, got {images_per_class}")
        budget["synth.images_per_class"] = images_per_class
    return budget
