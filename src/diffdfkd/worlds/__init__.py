"""Shipped worlds: small real-data settings with their data, teacher and generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffdfkd.registry import Registry, UnknownNameError

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
    looks: tuple[str, ...]  # the looks the generator was trained on (diffdfkd.worlds.looks)
    description: str

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


WORLDS: Registry[World] = Registry("world")


def _digits_world(name: str, generator: str, looks: tuple[str, ...], description: str) -> World:
    """A digits world: PUBLIC MNIST, PRIVATE scikit-learn digits, the shipped digits teacher."""
    from diffdfkd.worlds import digits

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


@WORLDS.register("digits")
def digits_world() -> World:
    from diffdfkd.worlds.looks import LOOKS

    return _digits_world(
        "digits",
        "digits_broad_generator",
        LOOKS,
        "the paper's setting: the generator's PUBLIC prior (5,000 MNIST images in six looks, one of them "
        "the teacher's low-resolution scan) holds the teacher's look among others; guidance must pick it",
    )


@WORLDS.register("digits-mnist")
def digits_mnist_world() -> World:
    return _digits_world(
        "digits-mnist",
        "digits_generator",
        ("plain",),
        "far-domain stress test: the generator knows only plain MNIST strokes, never the teacher's "
        "low-resolution look (PRIVATE: scikit-learn 8x8 digits rendered to 32x32)",
    )


def get_world(name: str) -> World:
    return WORLDS.create(name)


def list_worlds() -> list[str]:
    return WORLDS.names()
