"""Reading a synthetic dataset folder (made by ``synthesize`` or any source through the writer)."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffdfkd.synth.writer import (
    DatasetFolderError,
    IncompleteDatasetError,
    dataset_file,
    file_problem,
    missing_batches,
    num_batches,
    read_jsonl,
    sanitise_class_name,
)

KINDS = ("final", "intermediate")


@dataclass
class SyntheticData:
    """A synthetic dataset in memory.

    ``images [N, 3, H, W]`` float in [0, 1]; ``labels [N]`` long (argmax of ``targets``);
    ``targets [N, K]`` (one-hot, or soft after cross-class CutMix); ``teacher_logits [N, K]`` (on the
    saved image); ``indices [N]`` the sample index each image came from; ``kinds`` "final" or
    "intermediate" per image; ``class_names`` the K names; ``identity`` the sha256 of the manifest
    rows read and the kinds kept (the manifest lists every file's sha256, so equal identities mean
    equal images and labels).
    """

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor
    class_names: tuple[str, ...]
    indices: torch.Tensor
    kinds: tuple[str, ...]
    identity: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]


def read_rows(root: str | Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """The manifest rows of ``root``: ``manifest.jsonl``, or the per-batch parts while not merged yet
    (with a warning unless ``warn=False``: the dataset may still be incomplete)."""
    root = Path(root)
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        files = [manifest]
    else:
        files = sorted((root / "parts").glob("*.jsonl")) if (root / "parts").is_dir() else []
        if not files:
            raise DatasetFolderError(
                f"{root} holds no manifest.jsonl and no parts/*.jsonl: not a synthetic dataset folder "
                f"(make one with `diffdfkd synthesize`)"
            )
        if warn:
            warnings.warn(
                f"{root} has no manifest.jsonl yet (synthesis unfinished or its shards not merged); reading "
                f"{len(files)} batch parts, which may be fewer than the whole dataset",
                stacklevel=2,
            )
    return [row for path in files for row in read_jsonl(path)]


def require_complete(root: Path, allow_partial: bool) -> list[int]:
    """The batches of dataset ``root`` still missing; refused unless ``allow_partial``."""
    missing = missing_batches(root)
    if missing and not allow_partial:
        raise IncompleteDatasetError(
            f"{root} is unfinished: {len(missing)} of {num_batches(root)} batches are missing (first: "
            f"{missing[:5]}); rerun `diffdfkd synthesize` with the same config to finish it, or pass "
            f"--allow-partial to use the images made so far"
        )
    return missing


def dataset_identity(rows: list[dict[str, Any]], kinds: tuple[str, ...]) -> str:
    """sha256 of the manifest ``rows`` kept and their ``kinds``: the identity a student is trained on."""
    return hashlib.sha256(json.dumps([sorted(kinds), rows], sort_keys=True).encode()).hexdigest()


def _open_image(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels of an image file; a damaged file is a ``DatasetFolderError``.

    16-bit grey images (PIL modes ``I;16*`` and ``I``, as 16-bit PNGs open) are scaled to 8 bits
    (``round(v / 257)``), not clipped as ``convert("RGB")`` would clip them."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I"):
                grey = np.asarray(image).astype(np.float64) / 257.0
                grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DatasetFolderError(f"cannot read the image {path}: {error}") from None


def _stack(arrays: list[np.ndarray], files: Sequence[Path | str], root: Path) -> np.ndarray:
    """``[N, H, W, 3]`` of images that must all have one size; another size is refused, naming a file."""
    odd = [(f, a.shape) for f, a in zip(files, arrays, strict=True) if a.shape != arrays[0].shape]
    if odd:
        (name, shape), (h, w, _) = odd[0], arrays[0].shape
        raise DatasetFolderError(
            f"{root} holds images of several sizes: {name} is {shape[1]} x {shape[0]} px, {files[0]} "
            f"{w} x {h} px ({len(odd)} of {len(arrays)} differ); give it images of one size"
        )
    return np.stack(arrays)


def load_synthetic(
    root: str | Path, *, kinds: tuple[str, ...] = KINDS, allow_partial: bool = False
) -> SyntheticData:
    """Load the images and manifest of ``root`` (``kinds``: which of "final"/"intermediate" to keep).

    Every file must match its manifest row (size and sha256); a damaged or missing one is an error
    that says how to remake it. A dataset with batches still missing is refused unless
    ``allow_partial`` (then a warning says how many images are used).
    """
    root = Path(root)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    classes_file = root / "classes.json"
    if not classes_file.is_file():
        raise DatasetFolderError(f"{root} has no classes.json: not a synthetic dataset folder")
    missing = require_complete(root, allow_partial)
    class_names = tuple(json.loads(classes_file.read_text()))
    rows = [r for r in read_rows(root, warn=False) if r["kind"] in kinds]  # partial: reported below
    if not rows:
        raise ValueError(f"{root} holds no images of kinds {kinds}")
    if missing:
        warnings.warn(
            f"{root} is unfinished ({len(missing)} of {num_batches(root)} batches missing): using the "
            f"{len(rows)} images made so far",
            stacklevel=2,
        )
    problems = [problem for r in rows if (problem := file_problem(root, r)) is not None]
    if problems:
        raise DatasetFolderError(
            f"{root}: {len(problems)} image(s) are missing or damaged ({'; '.join(problems[:3])}); rerun "
            f"`diffdfkd synthesize` with the same config: it remakes them byte-identical"
        )
    num_classes = len(class_names)
    pixels = _stack(
        [_open_image(dataset_file(root, r["file"])) for r in rows], [r["file"] for r in rows], root
    )
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0)
    one_hot = torch.eye(num_classes)
    targets = torch.stack(
        [
            torch.tensor(r["target"], dtype=torch.float32) if "target" in r else one_hot[r["class"]]
            for r in rows
        ]
    )
    return SyntheticData(
        images=images,
        labels=targets.argmax(dim=1),
        targets=targets,
        teacher_logits=torch.tensor([r["teacher_logits"] for r in rows], dtype=torch.float32),
        class_names=class_names,
        indices=torch.tensor([r["index"] for r in rows], dtype=torch.long),
        kinds=tuple(r["kind"] for r in rows),
        identity=dataset_identity(rows, kinds),
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def class_folder_index(folder: str, class_names: Sequence[str]) -> int | None:
    """The class a folder name stands for, or None: the class name itself, its path-safe form
    (``sanitise_class_name``), or either after a ``<k>_`` prefix whose number is the class index
    (``007_seven``, as the dataset writer names them, or ``7_seven``)."""
    prefixed = re.fullmatch(r"(\d+)_(.+)", folder)
    for k, name in enumerate(class_names):
        accepted = (name, sanitise_class_name(name))
        if folder in accepted or (prefixed and int(prefixed[1]) == k and prefixed[2] in accepted):
            return k
    return None


def match_class_folders(root: str | Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    """The class sub-folders of ``root`` matched BY NAME to ``class_names`` -> ``[(folder, k)]``.

    Folder order means nothing (alphabetical order is not class order). Refuses, naming them,
    folders that match no class, two folders for one class and classes without a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetFolderError(f"image folder {root} does not exist")
    if (root / "images").is_dir() and (root / "classes.json").is_file():
        root = root / "images"  # a synthetic dataset folder
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetFolderError(
            f"{root} has no class sub-folders (ImageFolder layout: <root>/<class name>/<image>)"
        )
    matched = [(folder, class_folder_index(folder.name, class_names)) for folder in folders]
    unknown = [folder.name for folder, k in matched if k is None]
    found = [k for _, k in matched if k is not None]
    twice = sorted({class_names[k] for k in found if found.count(k) > 1})
    absent = [name for k, name in enumerate(class_names) if k not in found]
    if unknown or twice or absent:
        details = [
            f"folders that name no class: {unknown}" if unknown else "",
            f"classes with several folders: {twice}" if twice else "",
            f"classes without a folder: {absent}" if absent else "",
        ]
        raise DatasetFolderError(
            f"the class folders of {root} do not match the teacher's {len(class_names)} classes "
            f"({'; '.join(d for d in details if d)}); name each folder after its class "
            f"(teacher.class_names: {list(class_names)}), optionally behind its index as in 007_{class_names[-1]}"
        )
    return [(folder, k) for folder, k in matched if k is not None]


def class_image_files(root: str | Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    """The images of an ImageFolder-layout folder with their classes, ``[(file, k)]``, the class folders
    matched by name (``match_class_folders``); a class folder without images is refused, naming it
    (its per-class accuracy would be undefined and its top-1 share silently missing)."""
    files, empty = [], []
    for folder, k in match_class_folders(root, class_names):
        images = [(f, k) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        files += images
        if not images:
            empty.append(folder.name)
    if empty:
        raise DatasetFolderError(
            f"the class folder(s) {empty} of {root} hold no images ({', '.join(IMAGE_SUFFIXES)}); every "
            f"class needs test images, or evaluate with a teacher of fewer classes"
        )
    return files


def load_image_folder(root: str | Path, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """An ImageFolder-layout folder (one sub-folder per class, matched to ``class_names`` by name,
    see ``match_class_folders``; none empty) -> ``(images [N, 3, H, W] in [0, 1], labels [N])``; all
    images must have one size. ``root`` may also be a synthetic dataset folder (its ``images/`` is
    read, intermediates included)."""
    files = class_image_files(root, class_names)
    pixels = _stack([_open_image(f) for f, _ in files], [f for f, _ in files], Path(root))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0)
    return images, torch.tensor([k for _, k in files], dtype=torch.long)
