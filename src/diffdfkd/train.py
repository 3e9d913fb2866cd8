"""Training a classifier on a world split: the digits teacher, the real-data baselines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from diffdfkd.config import DistillConfig
from diffdfkd.distill.trainer import FitResult, TensorData, fit, split_holdout
from diffdfkd.models import create_model
from diffdfkd.runinfo import write_run_info
from diffdfkd.worlds import get_world

TEACHER_RECIPE = DistillConfig(
    epochs=30,
    batch_size=64,
    lr=0.05,
    weight_decay=5e-4,
    schedule="cosine",
    crop_padding=2,
    holdout_fraction=0.1,
)
# The emoji teacher (wrn_16_2 on 653 Twemoji): white padding, flips (no class depends on direction) and
# colour jitter, longer training for the smaller set.
EMOJI_TEACHER_RECIPE = replace(
    TEACHER_RECIPE, epochs=80, crop_padding=3, crop_fill=1.0, hflip=True, color_jitter=0.2
)
TEACHER_RECIPES = {"emoji": EMOJI_TEACHER_RECIPE}


def teacher_recipe(world: str) -> DistillConfig:
    """The recipe ``diffdfkd train-teacher`` uses for ``world`` (before command-line overrides)."""
    return TEACHER_RECIPES.get(world, TEACHER_RECIPE)


def train_classifier(
    world_name: str,
    arch: str,
    *,
    split: str = "private:train",
    recipe: DistillConfig = TEACHER_RECIPE,
    out_dir: str | Path,
    seed: int = 0,
    limit: int = 0,
    progress: bool = True,
) -> tuple[torch.nn.Module, FitResult]:
    """Train zoo model ``arch`` with cross-entropy on ``split`` of a world; checkpoints in ``out_dir``.

    ``limit`` > 0 keeps only the first ``limit`` images (for quick tests). A slice of
    ``recipe.holdout_fraction`` of the split is held out for monitoring; the result is the last epoch.
    """
    world = get_world(world_name)
    images, labels = world.load(split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    train_idx, holdout_idx = split_holdout(len(labels), recipe.holdout_fraction, seed)
    model = create_model(arch, num_classes=len(world.class_names), in_channels=images.shape[1])
    out_dir = Path(out_dir)
    write_run_info(out_dir, recipe)
    result = fit(
        model,
        TensorData(images[train_idx], labels[train_idx]),
        holdout=TensorData(images[holdout_idx], labels[holdout_idx]) if len(holdout_idx) else None,
        recipe=recipe,
        out_dir=out_dir,
        seed=seed,
        progress=progress,
    )
    return model, result
