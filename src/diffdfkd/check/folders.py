"""The output folder (new, resumable or another config's), the test data and writability."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from diffdfkd.config import ConfigError, ExperimentConfig, from_dict, load_yaml, to_dict
from diffdfkd.models.teacher import Teacher
from diffdfkd.runtime import changed_keys
from diffdfkd.synth.dataset import class_image_files
from diffdfkd.worlds import get_world, list_worlds

# What a run makes from its student (removed with it when a new one is trained).
REPORT_NAMES = ("results.json", "report.md", "report.html", "synthetic_grid.png", "training_curves.png")
# What a run writes into its out_dir; anything else there makes it someone else's folder.
RUN_NAMES = ("config.yaml", "run_info.json", "synth", "student", *REPORT_NAMES)


def check_writable(folder: Path, key: str) -> None:
    """A file can be created where ``folder`` (the value of config key ``key``) is or will be: probed
    with a temporary file in it or in its nearest existing parent, removed at once."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is a file, not a folder; choose a folder for {folder}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".diffdfkd-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"{key}: cannot write into {existing} ({error.strerror or error}); choose a writable folder for {folder}"
        ) from None


def saved_config(path: Path) -> dict[str, Any]:
    """A run folder's saved ``config.yaml`` as a plain dict, to compare with the current config: with
    today's defaults filled in, or, when an older version wrote keys that no longer exist, as written
    (those keys then count as changed instead of failing the comparison)."""
    written = load_yaml(path.read_text(), str(path)) or {}
    try:
        return to_dict(from_dict(ExperimentConfig, written))
    except ConfigError:
        return written


def output_state(config: ExperimentConfig, overwrite: bool) -> str:
    """``out_dir``'s state, read only: "new" (absent, empty, or only a dataset made there by
    ``synthesize``), "resumable" (made with this config) or "replaced" (another config's, with
    ``overwrite``). Another config's without ``overwrite`` is refused, naming the changed keys, and
    so is a folder holding files of someone else's; another config's run that made nothing yet (it
    failed before its first batch or epoch) is "new": a folder is claimed by its first result."""
    out = Path(config.out_dir)
    saved = out / "config.yaml"
    if not saved.is_file():
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out_dir {out} is a file; choose a new or empty folder")
        entries = out.iterdir() if out.is_dir() else ()
        foreign = sorted(p.name for p in entries if p.name not in RUN_NAMES and not p.name.startswith("."))
        if foreign:
            raise ConfigError(
                f"out_dir {out} holds files that are not a diffdfkd run ({', '.join(foreign[:3])}...); "
                f"choose a new or empty folder"
            )
        return "new"
    changed = changed_keys(saved_config(saved), to_dict(config))
    if not changed:
        return "resumable"
    made = any((out / name).exists() for name in ("student/state.pt", *REPORT_NAMES))
    if not made and not any((out / "synth" / "parts").glob("*.jsonl")):
        return "new"
    if not overwrite:
        raise ConfigError(
            f"{out} holds a run made with another config (changed: {', '.join(changed)}); "
            f"rerun with the same config to resume, choose another out_dir, or pass --overwrite"
        )
    return "replaced"


def check_test_data(config: ExperimentConfig, teacher: Teacher, split: str = "private:test") -> str:
    """Where the labelled test images come from, checked: ``eval_folder`` (classes matched to the
    teacher's by folder name), else the world's ``split`` (by default its PRIVATE test split), which
    only fits a teacher of the world's classes. Returns the name of the data."""
    if config.eval_folder:
        count = len(class_image_files(config.eval_folder, teacher.class_names))
        return f"{config.eval_folder} ({count} images, {teacher.num_classes} class folders matched by name)"
    if config.world not in list_worlds():
        raise ConfigError(
            f"world {config.world!r} is not a shipped world ({', '.join(list_worlds())}): set eval_folder to a "
            f"folder of labelled test images (one sub-folder per class) for the final evaluation"
        )
    world = get_world(config.world)
    if tuple(world.class_names) != tuple(teacher.class_names):
        raise ConfigError(
            f"the teacher's classes {list(teacher.class_names)} are not the {config.world} world's "
            f"{list(world.class_names)}, so its private test split cannot evaluate it: set eval_folder to a "
            f"folder of labelled test images (one sub-folder per class)"
        )
    if split not in world.splits():
        raise ConfigError(
            f"the {config.world} world has no split {split!r}; choose from {', '.join(world.splits())}"
        )
    return f"{config.world} {split}"
