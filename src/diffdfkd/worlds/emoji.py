"""The emoji world: the paper's DomainNet setting at CPU scale (colour, style-shifted, teacher far from perfect).

The same emoji drawn in seven openly licensed art styles (npm packages, see ``weights/NOTICE``):

- PRIVATE (the teacher's data): Twemoji (CC-BY 4.0), split by stem (:mod:`diffdfkd.worlds.emoji_build`):
  an emoji, its skin tones and its man / woman / person versions never straddle train and test. Shipped
  as ``weights/emoji_private.npz``.
- PUBLIC (the generator's prior and the measuring classifiers'): Noto (Apache 2.0), OpenMoji colour and
  black line art (CC-BY-SA 4.0), Fluent flat, gradient colour ("modern") and high-contrast line art
  (MIT). Built by ``diffdfkd world build-data --world emoji`` into the cache (:func:`cache_dir`).

Twelve classes, each a group of Unicode sub-categories that look alike (:data:`CLASS_SUBCATEGORIES`).
Images are float tensors ``[N, 3, 32, 32]`` in [0, 1] on white; labels ``[N]`` int64.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from diffdfkd.registry import UnknownNameError

CLASS_NAMES = (
    "face",
    "person",
    "person_action",
    "hand",
    "mammal",
    "other_animal",
    "plant_produce",
    "meal_drink",
    "vehicle",
    "building_place",
    "clothing",
    "sky_weather",
)
# emoji-datasource sub-categories of each class (same order as CLASS_NAMES)
CLASS_SUBCATEGORIES: tuple[tuple[str, ...], ...] = (
    (
        "face-smiling",
        "face-affection",
        "face-tongue",
        "face-hand",
        "face-neutral-skeptical",
        "face-sleepy",
        "face-unwell",
        "face-hat",
        "face-glasses",
        "face-concerned",
        "face-negative",
    ),
    ("person", "person-role", "person-fantasy"),
    ("person-gesture", "person-activity", "person-sport", "person-resting"),
    (
        "hand-fingers-open",
        "hand-fingers-partial",
        "hand-single-finger",
        "hand-fingers-closed",
        "hands",
        "hand-prop",
    ),
    ("animal-mammal",),
    ("animal-bird", "animal-amphibian", "animal-reptile", "animal-marine", "animal-bug"),
    ("plant-flower", "plant-other", "food-fruit", "food-vegetable"),
    ("food-prepared", "food-asian", "food-sweet", "drink"),
    ("transport-ground", "transport-water", "transport-air"),
    ("place-map", "place-geographic", "place-building", "place-religious", "place-other"),
    ("clothing",),
    ("sky & weather",),
)
# emoji filed under a class's sub-categories that are not what the class shows (signs, track, parts)
EXCLUDED_NAMES = frozenset(
    {
        "fuel pump",
        "police car light",
        "horizontal traffic light",
        "vertical traffic light",
        "stop sign",
        "construction",
        "bus stop",
        "railway track",
        "motorway",
        "oil drum",
        "wheel",
        "ring buoy",
        "anchor",
        "seat",
        "station",
        "airplane departure",
        "airplane arrival",
        "barber pole",
        "thermometer",
        "high voltage",
        "fire",
        "water wave",
        "droplet",
    }
)
STYLES = (
    "twemoji",
    "noto",
    "openmoji_color",
    "openmoji_black",
    "fluent_flat",
    "fluent_modern",
    "fluent_high_contrast",
)
PRIVATE_STYLE = "twemoji"
PUBLIC_STYLES = STYLES[1:]
# how a caption names each PUBLIC style (the generator never sees Twemoji)
STYLE_PHRASES = {
    "noto": "glossy cartoon",
    "openmoji_color": "outlined colour drawing",
    "openmoji_black": "black line art",
    "fluent_flat": "flat colour",
    "fluent_modern": "soft gradient colour",
    "fluent_high_contrast": "high contrast line art",
}
IMAGE_SIZE = 32
SPLIT_SEED = 0
TEST_FRACTION = 0.45
PRIVATE_SPLITS = ("train", "test")
PUBLIC_SPLITS = ("all", "train", "test", *PUBLIC_STYLES)
PUBLIC_TEST_FRACTION = 0.2  # the measuring classifiers' held-out stems
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
PRIVATE_FILE = WEIGHTS / "emoji_private.npz"
PUBLIC_FILE_NAME = "emoji_public.npz"


def cache_dir() -> Path:
    """Where the data build keeps its tarballs and the PUBLIC arrays: ``$DIFFDFKD_CACHE/emoji``
    (default ``~/.cache/diffdfkd/emoji``)."""
    root = os.environ.get("DIFFDFKD_CACHE") or Path.home() / ".cache" / "diffdfkd"
    return Path(root) / "emoji"


def _tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def _read(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"no {what} at {path}; build it with `diffdfkd world build-data --world emoji`"
        )
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@lru_cache(maxsize=2)
def _private(path: Path = PRIVATE_FILE) -> dict[str, np.ndarray]:
    return _read(path, "emoji PRIVATE data")


@lru_cache(maxsize=2)
def _public(path: Path) -> dict[str, np.ndarray]:
    return _read(path, "emoji PUBLIC data")


def load_private(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PRIVATE Twemoji images and labels, ``split`` 'train' or 'test' (stems never straddle them).

    Only teacher training and final evaluation may read these: synthesis and distillation never do.
    """
    if split not in PRIVATE_SPLITS:
        raise UnknownNameError(f"unknown private split {split!r}; choose from {PRIVATE_SPLITS}")
    data = _private()
    return _tensors(data[f"{split}_images"], data[f"{split}_labels"])


def private_names(split: str) -> np.ndarray:
    """The CLDR names of a PRIVATE split's images (for reports)."""
    return _private()[f"{split}_names"]


def public_arrays(path: Path | None = None) -> dict[str, np.ndarray]:
    """The PUBLIC build's arrays: ``<style>_images`` ``[n, 32, 32, 3]`` uint8, ``_labels``, ``_names``,
    ``_stems`` for each PUBLIC style."""
    return _public(Path(path) if path is not None else cache_dir() / PUBLIC_FILE_NAME)


def public_test_stems(stems: np.ndarray) -> np.ndarray:
    """Boolean mask of the measuring classifiers' held-out stems: a fixed hash of the stem, so every
    style holds out the same emoji."""
    import zlib

    return np.asarray([zlib.crc32(s.encode()) % 1000 < 1000 * PUBLIC_TEST_FRACTION for s in stems])


def load_public_styled(split: str = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PUBLIC images, labels and style indices (into :data:`PUBLIC_STYLES`).

    ``split``: 'all'; 'train' / 'test' (the measuring classifiers' split by stem); or one style's name.
    """
    if split not in PUBLIC_SPLITS:
        raise UnknownNameError(f"unknown public split {split!r}; choose from {PUBLIC_SPLITS}")
    data = public_arrays()
    images, labels, styles = [], [], []
    for i, style in enumerate(PUBLIC_STYLES):
        if split in PUBLIC_STYLES and split != style:
            continue
        keep = np.ones(len(data[f"{style}_labels"]), bool)
        if split in ("train", "test"):
            held = public_test_stems(data[f"{style}_stems"])
            keep = held if split == "test" else ~held
        images.append(data[f"{style}_images"][keep])
        labels.append(data[f"{style}_labels"][keep])
        styles.append(np.full(int(keep.sum()), i, np.int64))
    x, y = _tensors(np.concatenate(images), np.concatenate(labels))
    return x, y, torch.from_numpy(np.concatenate(styles))


def load_public(split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """PUBLIC images and labels (see :func:`load_public_styled`)."""
    images, labels, _ = load_public_styled(split)
    return images, labels
