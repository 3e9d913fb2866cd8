"""The checks of distillation: the dataset (complete, the teacher's classes, this config's), the
student, the batch size."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.distill.trainer import checkpoint_run, split_holdout
from diffdfkd.models import create_model
from diffdfkd.models.teacher import Teacher
from diffdfkd.runtime import describe_changes
from diffdfkd.synth.dataset import KINDS, dataset_identity, read_rows, require_complete
from diffdfkd.synth.run import SynthPlan, dataset_signature
from diffdfkd.synth.writer import DatasetFolderError, DatasetWriter, dataset_file


def check_dataset(
    root: Path, config: ExperimentConfig, teacher: Teacher, allow_partial: bool, overwrite: bool
) -> list[str]:
    """The dataset exists, is complete (or ``allow_partial``), has the teacher's classes, and is the
    one a student checkpoint in ``out_dir`` was trained on."""
    classes_file = root / "classes.json"
    if not classes_file.is_file():
        raise DatasetFolderError(
            f"{root} is not a synthetic dataset folder (no classes.json); make one with `diffdfkd "
            f"synthesize`, or give --data the folder it wrote"
        )
    names = tuple(json.loads(classes_file.read_text()))
    if names != teacher.class_names:
        raise ConfigError(
            f"the dataset {root} has the classes {list(names)}, the teacher {list(teacher.class_names)}"
        )
    missing = require_complete(root, allow_partial)
    rows = read_rows(root, warn=False)
    line = f"dataset: {root}, {len(rows)} images" + (f" ({len(missing)} batches missing)" if missing else "")
    run = checkpoint_run(Path(config.out_dir) / "student")
    if run is not None and run.get("data") != dataset_identity(rows, KINDS):
        if not overwrite:
            raise ConfigError(
                f"{config.out_dir}/student holds a student trained on another dataset than {root} "
                f"(the manifests differ); choose another out_dir, or pass --overwrite to train a new one"
            )
        line += "; the student in the output folder was trained on another dataset: --overwrite replaces it"
    return [line]


def check_own_dataset(root: Path, config: ExperimentConfig, teacher: Teacher) -> None:
    """``distill`` without ``--data`` reads the config's synthesis output: it must have been made with
    this synthesis config (the online student included), as ``synthesize`` would require."""
    if not (root / "signature.json").is_file():
        return  # not a dataset at all: check_dataset says so
    plan = SynthPlan.from_config(config, teacher.num_classes)
    save_size = config.synth.save_size or teacher.input_size
    signature = dataset_signature(config, plan, teacher.class_names, save_size)
    if DatasetWriter(root, teacher.class_names).state(signature, overwrite=True) != "same":
        made_with = json.loads((root / "signature.json").read_text()).get("config", {})
        raise ConfigError(
            f"distill without --data reads this config's dataset, but {root} was made with another "
            f"config (differing keys: {describe_changes(made_with, signature) or '(unknown)'}); run `diffdfkd "
            f"synthesize` with this config, or give --data the dataset to distil on"
        )


def dataset_image_size(root: Path) -> int:
    """The side of the dataset's (square) images, from its first image's header."""
    first = read_rows(root, warn=False)[0]
    with Image.open(dataset_file(root, first["file"])) as image:
        return image.size[0]


def check_batch_size(config: ExperimentConfig, images: int) -> None:
    """``distill.batch_size`` fits the train split of ``images`` (a holdout of
    ``distill.holdout_fraction`` is kept out): each epoch needs one whole batch."""
    fraction = config.distill.holdout_fraction
    train = len(split_holdout(images, fraction, config.seed)[0])
    if config.distill.batch_size > train:
        raise ConfigError(
            f"distill.batch_size={config.distill.batch_size} is larger than the train split ({train} of "
            f"{images} images; distill.holdout_fraction={fraction} held out): lower distill.batch_size to "
            f"at most {train}, or make more images (synth.images_per_class)"
        )


def check_student(name: str, key: str, num_classes: int, size: int) -> str:
    """The student ``name`` (config key ``key``) exists and takes ``[B, 3, size, size]`` images to
    ``[B, K]`` logits."""
    student = create_model(name, num_classes=num_classes, in_channels=3).eval()
    try:
        with torch.no_grad():
            out = student(torch.zeros(2, 3, size, size))
    except RuntimeError as error:
        raise ConfigError(
            f"{key}={name} cannot take {size} x {size} images ({str(error).splitlines()[0]}); "
            f"choose a student for this size, or set synth.save_size to a size it takes"
        ) from None
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"{key}={name} gives logits {tuple(out.shape)}, expected [B, {num_classes}]")
    return f"student: {name} on {size} x {size} images"
