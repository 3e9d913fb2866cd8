"""Reading a synthetic dataset folder (made by ``synthesize`` or any source through the writer)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffdfkd.synth.writer import DatasetFolderError

KINDS = ("final", "intermediate")


@dataclass
class SyntheticData:
    """A synthetic dataset in memory.

    ``images [N, 3, H, W]`` float in [0, 1]; ``labels [N]`` long (argmax of ``targets``);
    ``targets [N, K]`` (one-hot, or soft after cross-class CutMix); ``teacher_logits [N, K]`` (on the
    saved image); ``indices [N]`` the sample index each image came from; ``kinds`` "final" or
    "intermediate" per image; ``class_names`` the K names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor
    class_names: tuple[str, ...]
    indices: torch.Tensor
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]


def read_rows(root: str | Path) -> list[dict[str, Any]]:
    """The manifest rows of ``root``: ``manifest.jsonl``, or the per-batch parts while not merged yet
    (with a warning: the dataset may still be incomplete)."""
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
        warnings.warn(
            f"{root} has no manifest.jsonl yet (synthesis unfinished or its shards not merged); reading "
            f"{len(files)} batch parts, which may be fewer than the whole dataset",
            stacklevel=2,
        )
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]


def load_synthetic(root: str | Path, *, kinds: tuple[str, ...] = KINDS) -> SyntheticData:
    """Load the images and manifest of ``root`` (``kinds``: which of "final"/"intermediate" to keep)."""
    from PIL import Image

    root = Path(root)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    classes_file = root / "classes.json"
    if not classes_file.is_file():
        raise DatasetFolderError(f"{root} has no classes.json: not a synthetic dataset folder")
    class_names = tuple(json.loads(classes_file.read_text()))
    rows = [r for r in read_rows(root) if r["kind"] in kinds]
    if not rows:
        raise ValueError(f"{root} holds no images of kinds {kinds}")
    num_classes = len(class_names)
    pixels = np.stack([np.asarray(Image.open(root / r["file"]).convert("RGB")) for r in rows])
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
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image_folder(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """An ImageFolder-layout folder (one sub-folder per class, sorted) -> ``(images [N, 3, H, W] in
    [0, 1], labels [N], class names)``; all images must have one size.

    ``root`` may also be a synthetic dataset folder (its ``images/`` is read, intermediates included,
    and the names come from its ``classes.json`` rather than the sanitised folder names).
    """
    from PIL import Image

    root = Path(root)
    names_file = root / "classes.json"
    if (root / "images").is_dir() and names_file.is_file():
        root = root / "images"
    elif (root.parent / "classes.json").is_file():
        names_file = root.parent / "classes.json"
    if not root.is_dir():
        raise DatasetFolderError(f"image folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetFolderError(
            f"{root} has no class sub-folders (ImageFolder layout: <root>/<class>/<image>)"
        )
    names = tuple(p.name for p in class_dirs)
    if names_file.is_file():
        listed = tuple(json.loads(names_file.read_text()))
        if len(listed) == len(names):
            names = listed
    files = [
        (f, k)
        for k, d in enumerate(class_dirs)
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DatasetFolderError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"{root} holds images of several sizes {sorted(sizes)[:4]}; resize them to one size")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)
    return images, torch.tensor([k for _, k in files], dtype=torch.long), names
