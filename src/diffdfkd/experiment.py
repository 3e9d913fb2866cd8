"""One run's resolved parts: the config, the teacher built from it and the folders it writes.

``run_experiment`` builds one ``Experiment`` and hands it to every stage (check, synthesis,
distillation, evaluation, report), so the teacher is constructed once per run (for a TorchScript
teacher each construction is a full conversion) and no stage re-resolves a folder. A stage called on
its own (``diffdfkd synthesize``, ``distill``, ``evaluate``) builds its own from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffdfkd.config import ExperimentConfig, replace
from diffdfkd.errors import UserError
from diffdfkd.models.teacher import Teacher, build_teacher
from diffdfkd.worlds import get_world, teacher_spec


@dataclass(frozen=True, eq=False)
class Experiment:
    """``config`` as given (its signatures and saved ``config.yaml`` come from it) and its ``teacher``."""

    config: ExperimentConfig
    teacher: Teacher

    @classmethod
    def build(cls, config: ExperimentConfig) -> Experiment:
        """Build the configured teacher (``worlds.teacher_spec``); raises a ``UserError`` naming what is wrong."""
        return cls(config, build_teacher(teacher_spec(config)))

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def synth_dir(self) -> Path:
        """The synthetic dataset's folder (``output_dir``)."""
        return output_dir(self.config)

    def generator_config(self) -> ExperimentConfig:
        """The config with an empty ``generator.path`` filled (``resolve_config``)."""
        return resolve_config(self.config)


def experiment_of(config: ExperimentConfig | Experiment) -> Experiment:
    """``config`` itself when it is an ``Experiment`` (handed down by ``run_experiment``), else one built
    from it (a stage called on its own)."""
    return config if isinstance(config, Experiment) else Experiment.build(config)


def resolve_config(config: ExperimentConfig) -> ExperimentConfig:
    """Fill an empty ``generator.path`` with the world's shipped generator (where one is shipped; only
    the diffusion source needs one)."""
    if config.generator.path:
        return config
    path = get_world(config.world).generator
    if not (path / "model_index.json").is_file():
        if config.synth.source != "diffdfkd":
            return config
        raise UserError(
            f"world {config.world!r} has no shipped generator at {path} yet; train it, or set generator.path"
        )
    return replace(config, **{"generator.path": str(path)})


def output_dir(config: ExperimentConfig) -> Path:
    """``synth.out_dir``, or ``<out_dir>/synth`` when it is empty."""
    return Path(config.synth.out_dir) if config.synth.out_dir else Path(config.out_dir) / "synth"
