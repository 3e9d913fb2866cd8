"""Shipped worlds: small real-data settings with their data, teacher and generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffdfkd.config import ConfigError, ExperimentConfig, TeacherConfig
from diffdfkd.models.teacher import TeacherSpec, carries_architecture
from diffdfkd.registry import Registry, UnknownNameError
from diffdfkd.worlds import digits, emoji
from diffdfkd.worlds.looks import LOOKS

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

Loader = Callable[[str], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class World:
    """A world: class names, PUBLIC data (the generator's), PRIVATE data (the teacher's), shipped parts.

    Both digits worlds share data and teacher; they differ in the generator's prior (``looks``).

    ``load_public(split)`` / ``load_private(split)`` return ``(images [N, 3, S, S] in [0, 1], labels [N])``.
    Only teacher training and final evaluation may read PRIVATE data.
    """

    name: str
    class_names: tuple[str, ...]
    image_size: int
    public_splits: tuple[str, ...]
    private_splits: tuple[str, ...]
    load_public: Loader
    load_private: Loader
    teacher_arch: str
    teacher_mean: tuple[float, ...]
    teacher_std: tuple[float, ...]
    teacher_weights: Path
    generator: Path
    looks: tuple[str, ...]  # the looks (digits) or styles (emoji) the generator was trained on
    description: str
    look_judge: str = "looks"  # the measuring classifier of those looks (diffdfkd.worlds.judge.JUDGES)

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Load ``'public:<split>'`` or ``'private:<split>'``."""
        part, _, name = split.partition(":")
        if part == "public" and name in self.public_splits:
            return self.load_public(name)
        if part == "private" and name in self.private_splits:
            return self.load_private(name)
        raise UnknownNameError(
            f"unknown split {split!r} of world {self.name!r}; choose from {', '.join(self.splits())}"
        )

    def splits(self) -> list[str]:
        return [f"public:{s}" for s in self.public_splits] + [f"private:{s}" for s in self.private_splits]

    def teacher_spec(self) -> TeacherSpec:
        """The shipped teacher, for ``models.build_teacher``; names the command that trains a missing one."""
        if not self.teacher_weights.is_file():
            raise FileNotFoundError(
                f"world {self.name!r} has no shipped teacher at {self.teacher_weights}; "
                f"train one with `diffdfkd train-teacher --world {self.name}`"
            )
        return TeacherSpec(
            self.teacher_arch,
            self.teacher_weights,
            self.class_names,
            input_size=self.image_size,
            mean=self.teacher_mean,
            std=self.teacher_std,
        )


def _digits_world(name: str, generator: str, looks: tuple[str, ...], description: str) -> World:
    """A digits world: PUBLIC MNIST, PRIVATE scikit-learn digits, the shipped digits teacher."""
    return World(
        name=name,
        class_names=digits.CLASS_NAMES,
        image_size=digits.IMAGE_SIZE,
        public_splits=digits.PUBLIC_SPLITS,
        private_splits=digits.PRIVATE_SPLITS,
        load_public=digits.load_public,
        load_private=digits.load_private,
        teacher_arch="cnn_small",
        # Models trained by diffdfkd take images in [0, 1] (their first BatchNorm normalises).
        teacher_mean=(0.0, 0.0, 0.0),
        teacher_std=(1.0, 1.0, 1.0),
        teacher_weights=WEIGHTS_DIR / "digits_teacher.safetensors",
        generator=WEIGHTS_DIR / generator,
        looks=looks,
        description=description,
    )


def digits_world() -> World:
    return _digits_world(
        "digits",
        "digits_broad_generator",
        LOOKS,
        "the paper's setting: the generator's PUBLIC prior (5,000 MNIST images in six looks, one of them "
        "the teacher's low-resolution scan) holds the teacher's look among others; guidance must pick it",
    )


def digits_mnist_world() -> World:
    return _digits_world(
        "digits-mnist",
        "digits_generator",
        ("plain",),
        "far-domain stress test: the generator knows only plain MNIST strokes, never the teacher's "
        "low-resolution look (PRIVATE: scikit-learn 8x8 digits rendered to 32x32)",
    )


def emoji_world() -> World:
    return World(
        name="emoji",
        class_names=emoji.CLASS_NAMES,
        image_size=emoji.IMAGE_SIZE,
        public_splits=emoji.PUBLIC_SPLITS,
        private_splits=emoji.PRIVATE_SPLITS,
        load_public=emoji.load_public,
        load_private=emoji.load_private,
        teacher_arch="wrn_16_2",
        teacher_mean=(0.0, 0.0, 0.0),  # trained on images in [0, 1], as every teacher diffdfkd trains
        teacher_std=(1.0, 1.0, 1.0),
        teacher_weights=WEIGHTS_DIR / "emoji_teacher.safetensors",
        generator=WEIGHTS_DIR / "emoji_generator",
        looks=emoji.PUBLIC_STYLES,
        description=(
            "the paper's DomainNet setting at CPU scale: 12 classes of emoji; the teacher knows only "
            "Twemoji (PRIVATE), the generator's prior six other openly licensed styles (PUBLIC)"
        ),
        look_judge="emoji-styles",
    )


WORLDS: Registry[World] = Registry(
    "world", {"digits": digits_world, "digits-mnist": digits_mnist_world, "emoji": emoji_world}
)
"""The shipped worlds by name."""


def get_world(name: str) -> World:
    return WORLDS.create(name)


def list_worlds() -> list[str]:
    return WORLDS.names()


def _value(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def teacher_spec(config: ExperimentConfig) -> TeacherSpec:
    """The configured teacher: the world's shipped one when ``teacher.weights`` is empty; else the
    given file, with the world's class names and arch where the config leaves them empty (a
    TorchScript or torch.export file carries its own network).

    Raises ``ConfigError`` for a missing weights file, for teacher keys (arch, class names, input size,
    channels, mean, std) set to other values than the shipped teacher's beside an empty
    ``teacher.weights`` (they would be ignored), and for empty fields that a world which is not shipped cannot fill.
    """
    tc = config.teacher
    if not tc.weights:
        spec = get_world(config.world).teacher_spec()
        # the shipped teacher brings its own facts: a key set to others would be ignored, so it is refused
        default = TeacherConfig()
        keys = ("arch", "class_names", "input_size", "in_channels", "mean", "std")
        ignored = [k for k in keys if getattr(tc, k) not in (getattr(default, k), getattr(spec, k))]
        if ignored:
            given = ", ".join(f"teacher.{k}={_value(getattr(tc, k))}" for k in ignored)
            shipped = ", ".join(f"{k}={_value(getattr(spec, k))}" for k in ignored)
            raise ConfigError(
                f"{given} set with an empty teacher.weights, which means the {config.world} world's shipped "
                f"teacher ({shipped}); set teacher.weights to the file these keys describe, or remove them"
            )
        return spec
    names, arch = tuple(tc.class_names), tc.arch
    if not Path(tc.weights).is_file():
        raise ConfigError(f"teacher.weights: {tc.weights} does not exist")
    # The world fills only what the teacher does not say itself (a TorchScript or .pt2 file has its network).
    if not names or not (arch or carries_architecture(Path(tc.weights))):
        if config.world not in list_worlds():
            missing = "teacher.class_names" if not names else "teacher.arch"
            raise ConfigError(
                f"set {missing}: world {config.world!r} is not a shipped world that could fill it"
                + (
                    f" ({tc.weights} is not a TorchScript file or a torch.export (.pt2) program, which would carry its network)"
                    if names
                    else ""
                )
            )
        world = get_world(config.world)
        names, arch = names or world.class_names, arch or world.teacher_arch
    return TeacherSpec(arch, Path(tc.weights), names, tc.input_size, tc.in_channels, tc.mean, tc.std)
