"""The checks that run before any work: ``diffdfkd check``, and the first step of ``synthesize``,
``distill`` and ``run``.

Everything here is cheap (seconds on a CPU): the teacher is loaded and run once on a blank image,
the student is built and run once, the generator folder's index, scheduler config and tokenizer are
read, and the header of every weights file (no UNet, VAE or text-encoder tensor is loaded), the
class prompts are tokenised, the evaluation folder is listed, the output folders' signatures are
read and a write is probed where they go. Nothing is sampled or trained, and nothing is left written.
A failed check raises a ``UserError`` that names what to change, so a command exits with code 2
before it claims any folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffdfkd.config import ConfigError, ExperimentConfig, from_dict, load_yaml, to_dict
from diffdfkd.diffusion.components import (
    build_scheduler,
    check_guidance_decoder,
    check_prompt_lengths,
    check_weight_files,
    guidance_decoder_folder,
    load_tokenizer,
    read_pipeline_index,
)
from diffdfkd.distill.trainer import checkpoint_run, split_holdout
from diffdfkd.experiment import Experiment, experiment_of
from diffdfkd.guidance.modes import guided_steps
from diffdfkd.guidance.teacher_loss import NoBatchNormError, batchnorm_layers
from diffdfkd.models import create_model
from diffdfkd.models.teacher import Teacher
from diffdfkd.runtime import changed_keys, describe_changes, resolve_device
from diffdfkd.synth.dataset import (
    KINDS,
    class_image_files,
    dataset_identity,
    read_rows,
    require_complete,
)
from diffdfkd.synth.diffusion_source import class_prompts
from diffdfkd.synth.online_student import check_online, online_arch
from diffdfkd.synth.run import SynthPlan, dataset_signature
from diffdfkd.synth.sources import SOURCES
from diffdfkd.synth.writer import DatasetFolderError, DatasetWriter, dataset_file, missing_batches
from diffdfkd.worlds import get_world, list_worlds

STAGES = ("synthesize", "distill", "run")
# What a run makes from its student (removed with it when a new one is trained).
REPORT_NAMES = ("results.json", "report.md", "report.html", "synthetic_grid.png", "training_curves.png")
# What a run writes into its out_dir; anything else there makes it someone else's folder.
RUN_NAMES = ("config.yaml", "run_info.json", "synth", "student", *REPORT_NAMES)
# Sources that sample the configured diffusion model (the others need no generator folder).
GENERATOR_SOURCES = ("diffdfkd",)


@dataclass
class CheckReport:
    """What a passed check found: the loaded ``teacher`` and one line per fact or plan item."""

    teacher: Teacher
    lines: list[str] = field(default_factory=list)


def check(
    config: ExperimentConfig | Experiment,
    stage: str,
    *,
    overwrite: bool = False,
    data: str | Path | None = None,
    allow_partial: bool = False,
) -> CheckReport:
    """Check everything ``stage`` (synthesize | distill | run) will need, without doing the work.

    ``data``: the dataset folder ``distill`` reads (default: the config's synthesis output).
    Raises a ``UserError`` for the first problem found; returns what was found and the plan.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    experiment = experiment_of(config)
    config, teacher = experiment.config, experiment.teacher
    size = teacher.input_size
    report = CheckReport(teacher)
    report.lines.append(
        f"teacher: {teacher.num_classes} classes ({', '.join(teacher.class_names)}), input "
        f"{teacher.in_channels} x {size} x {size}" + (f" ({teacher.origin})" if teacher.origin else "")
    )
    if stage in ("distill", "run"):
        report.lines.append(f"output folder {config.out_dir}: {output_state(config, overwrite)}")
        check_writable(Path(config.out_dir), "out_dir")
    if stage in ("synthesize", "run"):
        report.lines += _check_synthesis(experiment, overwrite)
    if stage == "distill":
        root = Path(data) if data else experiment.synth_dir
        if not data:  # the config's own dataset: made with this very config, or refused
            _check_own_dataset(root, config, teacher)
        report.lines += _check_dataset(root, config, teacher, allow_partial, overwrite)
        size = _dataset_image_size(root)
        images = len(read_rows(root, warn=False))
    elif stage == "run":
        size = config.synth.save_size or teacher.input_size
        plan = SynthPlan.from_config(config, teacher.num_classes)
        images = None if config.cutmix.keep_intermediates else plan.total  # intermediates add images
    if stage in ("distill", "run"):
        report.lines.append(
            _check_student(config.distill.student, "distill.student", teacher.num_classes, size)
        )
        if images is not None:
            _check_batch_size(config, images)
    if stage == "run":
        report.lines.append(f"test data: {check_test_data(config, teacher)}")
    return report


# --- synthesis -----------------------------------------------------------------------------------------


def _check_synthesis(experiment: Experiment, overwrite: bool) -> list[str]:
    """The source, the generator folder and its scheduler, the dataset folder's state, the plan."""
    config, teacher = experiment.config, experiment.teacher
    SOURCES.get(config.synth.source)  # an unknown name lists the known ones
    check_online(config)
    plan = SynthPlan.from_config(config, teacher.num_classes)
    lines = []
    if config.synth.source in GENERATOR_SOURCES:
        lines += _check_generator(experiment)
    _check_batchnorm(config, teacher)
    if config.synth.source in ("fast", "cmi") and teacher.input_size % 4:
        raise ConfigError(
            f"synth.source={config.synth.source} makes images whose side is a multiple of 4; the teacher takes {teacher.input_size}"
        )
    save_size = config.synth.save_size or teacher.input_size
    out = experiment.synth_dir
    writer = DatasetWriter(out, teacher.class_names)
    state = writer.state(dataset_signature(config, plan, teacher.class_names, save_size), overwrite=overwrite)
    check_writable(out, "synth.out_dir" if config.synth.out_dir else "out_dir")
    if state == "same":
        done = plan.num_batches - len(missing_batches(out))
        state = (
            f"this config's dataset, {done} of {plan.num_batches} batches done (resumes; files are verified)"
        )
    elif state == "replace":
        state = "another config's dataset: " + (
            "--overwrite deletes it" if overwrite else "no batch of it was finished, so it is replaced"
        )
    lines.append(f"dataset folder {out}: {state}")
    lines.append(
        f"plan: {plan.total} images in {plan.num_batches} batches of {plan.batch_size}, "
        f"{save_size} x {save_size} px, source {config.synth.source}"
        + (f", {_unet_calls(config, plan)}" if config.synth.source in GENERATOR_SOURCES else "")
    )
    if config.guidance.adv_weight > 0:
        o = config.online
        online_key = "online.student" if o.student else "distill.student (the online student)"
        lines.append(
            _check_student(online_arch(config), online_key, teacher.num_classes, save_size)
            + f" (online, for L_adv from round {o.warmup_rounds} of {plan.num_batches}; {o.kd_steps} "
            f"KD steps of {o.batch_size} images per round; one process)"
        )
    return lines


def _check_generator(experiment: Experiment) -> list[str]:
    """The pipeline folder has every part, each weights file is whole (its header covers it), the
    device exists, the scheduler takes ``num_steps``, the resolution is a whole number of latent
    pixels, every prompt fits the tokenizer's window."""
    gen = experiment.generator_config().generator
    class_names = experiment.teacher.class_names
    index = read_pipeline_index(gen.path)
    for part in ("unet", "vae", "text_encoder"):
        check_weight_files(Path(gen.path) / part)
    tokenizer = load_tokenizer(gen.path, index)
    key = "generator.prompt_template" if gen.prompt_template else "generator.prompt"
    check_prompt_lengths(tokenizer, class_prompts(gen, class_names), f"prompt of {key}")
    check_prompt_lengths(tokenizer, [gen.negative_prompt], "generator.negative_prompt")
    resolve_device(gen.device)
    scheduler, _ = build_scheduler(gen.path, gen.scheduler)
    train_steps = scheduler.config.num_train_timesteps
    try:
        scheduler.set_timesteps(gen.num_steps)
    except ValueError as error:
        raise ConfigError(
            f"generator.num_steps={gen.num_steps} does not fit the {gen.scheduler} scheduler of {gen.path} "
            f"({train_steps} training steps): {error}"
        ) from None
    vae = json.loads((Path(gen.path) / "vae" / "config.json").read_text())
    unet = json.loads((Path(gen.path) / "unet" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)  # as DiffusionComponents.vae_scale_factor
    resolution = gen.resolution or int(unet["sample_size"]) * factor
    if resolution % factor:
        raise ConfigError(f"generator.resolution={resolution} is not a multiple of the VAE factor {factor}")
    decoder = guidance_decoder_folder(gen.path, gen.guidance_decoder)
    if decoder is not None:
        check_guidance_decoder(decoder, int(unet["in_channels"]), factor)
        check_weight_files(decoder)
    return [
        f"generator: {gen.path} ({gen.scheduler}, {gen.num_steps} of {train_steps} steps, "
        f"{resolution} x {resolution} px" + (f"; guidance decoder {decoder})" if decoder is not None else ")")
    ]


def _check_batchnorm(config: ExperimentConfig, teacher: Teacher) -> None:
    """A BN-statistics loss with a weight needs BatchNorm layers it can hook in the teacher."""
    guided = config.synth.source in GENERATOR_SOURCES and config.guidance.mode != "none"
    key, weight = ("guidance.bn_weight", config.guidance.bn_weight)
    if config.synth.source in ("deepinversion", "fast", "cmi"):  # image-space baselines: their own BN weight
        name = config.synth.source
        guided, key, weight = True, f"{name}.bn_weight", getattr(config, name).bn_weight
    if not guided or weight == 0:
        return
    try:
        batchnorm_layers(teacher.network)
    except NoBatchNormError as error:
        raise ConfigError(
            f"{key}={weight}, but the BN-statistics loss cannot run on this teacher: {error}. Ways out: "
            f"{key}=0 (no BN-statistics term), or a teacher whose BatchNorm layers it reaches (a zoo "
            f"architecture with its weights: teacher.arch + teacher.weights)"
        ) from None


def _unet_calls(config: ExperimentConfig, plan: SynthPlan) -> str:
    """The estimated number of CFG-batched UNet calls (and backward passes) of the whole dataset."""
    steps = config.generator.num_steps
    mode = config.guidance.mode
    guided = guided_steps(config.guidance, steps)
    per_batch = steps + (guided if mode in ("full", "detach_unet") else 0)
    backward = guided if mode in ("full", "one_pass") else 0
    return (
        f"{steps} sampling steps ({guided} guided, mode {mode}): about {per_batch * plan.num_batches} "
        f"UNet calls and {backward * plan.num_batches} UNet backward passes"
    )


# --- distillation --------------------------------------------------------------------------------------


def _check_dataset(
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


def _check_own_dataset(root: Path, config: ExperimentConfig, teacher: Teacher) -> None:
    """``distill`` without ``--data`` reads the config's synthesis output: it must have been made with
    this synthesis config (the online student included), as ``synthesize`` would require."""
    if not (root / "signature.json").is_file():
        return  # not a dataset at all: _check_dataset says so
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


def _dataset_image_size(root: Path) -> int:
    """The side of the dataset's (square) images, from its first image's header."""
    first = read_rows(root, warn=False)[0]
    with Image.open(dataset_file(root, first["file"])) as image:
        return image.size[0]


def _check_batch_size(config: ExperimentConfig, images: int) -> None:
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


def _check_student(name: str, key: str, num_classes: int, size: int) -> str:
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


# --- output folder and test data -----------------------------------------------------------------------


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
