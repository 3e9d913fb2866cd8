"""The checks that run before any work: ``diffdfkd check``, and the first step of ``synthesize``,
``distill`` and ``run``.

Everything here is cheap (seconds on a CPU): the teacher is loaded and run once on a blank image,
the student is built and run once, the generator folder's index, scheduler config and tokenizer are
read, and the header of every weights file (no UNet, VAE or text-encoder tensor is loaded), the
class prompts are tokenised, the evaluation folder is listed, the output folders' signatures are
read and a write is probed where they go. Nothing is sampled or trained, and nothing is left written.
A failed check raises a ``UserError`` that names what to change, so a command exits with code 2
before it claims any folder.

``synthesis`` (source, generator folder, dataset folder, plan), ``distillation`` (dataset, student,
batch size), ``folders`` (output folder, test data, writability).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffdfkd.check.distillation import (
    check_batch_size,
    check_dataset,
    check_own_dataset,
    check_student,
    dataset_image_size,
)
from diffdfkd.check.folders import check_test_data, check_writable, output_state
from diffdfkd.check.synthesis import check_synthesis
from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.experiment import Experiment, experiment_of
from diffdfkd.models.teacher import Teacher
from diffdfkd.synth.dataset import read_rows
from diffdfkd.synth.run import SynthPlan

STAGES = ("synthesize", "distill", "run")


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
        report.lines += check_synthesis(experiment, overwrite)
    if stage == "distill":
        root = Path(data) if data else experiment.synth_dir
        if not data:  # the config's own dataset: made with this very config, or refused
            check_own_dataset(root, config, teacher)
        report.lines += check_dataset(root, config, teacher, allow_partial, overwrite)
        size = dataset_image_size(root)
        images = len(read_rows(root, warn=False))
    elif stage == "run":
        size = config.synth.save_size or teacher.input_size
        plan = SynthPlan.from_config(config, teacher.num_classes)
        images = None if config.cutmix.keep_intermediates else plan.total  # intermediates add images
    if stage in ("distill", "run"):
        report.lines.append(
            check_student(config.distill.student, "distill.student", teacher.num_classes, size)
        )
        if images is not None:
            check_batch_size(config, images)
    if stage == "run":
        report.lines.append(f"test data: {check_test_data(config, teacher)}")
    return report
