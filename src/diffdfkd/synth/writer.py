"""The resumable synthetic-dataset folder.

Layout of ``<out>``::

    images/<k:03d>_<class>/<index:07d>.png          final images (ImageFolder-compatible under images/)
    images/<k:03d>_<class>/<index:07d>_s<step:03d>.png   intermediates (decoded x0_hat at CutMix steps)
    parts/<batch:06d>.jsonl                         one manifest part per finished batch
    manifest.jsonl                                  all parts in batch order, once every batch is done
    seconds/<batch:06d>.txt                         the time its process spent on each batch
    seconds/<batch:06d>.redo.txt                    a resumed process's time redoing written rounds
    classes.json  signature.json  config.yaml  run_info.json  summary.json

A batch is done iff its part exists. Its PNGs are written first (each to a temp file, then
``os.replace``), the part last, so a run killed at any point and started again redoes exactly the
unfinished batches and ends byte-identical to an uninterrupted run. ``seconds/<batch:06d>.txt``
holds the time its process spent on a batch (loading included for its first one), so that the
dataset's cost counts every process that made it (not part of the dataset's bytes). A resumed process
that first redoes the rounds already written (Fast, CMI, the online student: ``synth.rounds``) keeps
that time apart, in ``seconds/<batch:06d>.redo.txt`` of the first batch it makes: it is the cost of
the interruption, not of the dataset.

A folder is claimed by its first finished batch: one that holds another config's signature but no
finished batch (a run that failed before its first batch) is replaced without ``--overwrite``. The
writing processes hold ``.lock`` (``files.FolderLock``): shards of the same config share it, and a
second writer of another config is refused while they run.

Every file a manifest names is resolved by ``dataset_file``, which refuses a path outside the dataset
before anything is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffdfkd.config import ConfigError, to_dict
from diffdfkd.errors import UserError
from diffdfkd.files import FolderBusyError, FolderLock, replace_atomically
from diffdfkd.runinfo import write_run_info
from diffdfkd.runtime import describe_changes, flatten

SIGNATURE_FILE = "signature.json"
# Config keys that do not change the images (where and on which device they are made).
UNSIGNED_KEYS = (
    "out_dir",
    "synth.out_dir",
    "generator.device",
    "generator.gradient_checkpointing",
    "distill",
)
OWN_NAMES = (
    "images",
    "parts",
    "seconds",
    "tmp",
    "manifest.jsonl",
    "summary.json",
    SIGNATURE_FILE,
    "classes.json",
    "config.yaml",
    "run_info.json",
)


class SynthWriteError(UserError, OSError):
    """Writing the dataset failed (disk full, permissions...); no partial file was left behind."""


class DatasetFolderError(UserError, FileNotFoundError):
    """A folder that is not (or not yet) a synthetic dataset, with what is missing."""


class IncompleteDatasetError(UserError, RuntimeError):
    """The dataset folder does not hold every batch yet."""


def sanitise_class_name(name: str) -> str:
    """A class name safe as one path component: ``[A-Za-z0-9._-]`` only, no ``..``, no leading dot."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip())
    safe = re.sub(r"\.{2,}", "_", safe).strip("._")
    return safe[:64] or "class"


def class_dir(k: int, name: str) -> str:
    """``007_seven``: the class folder name, ordered by class index under ImageFolder's sort."""
    return f"{k:03d}_{sanitise_class_name(name)}"


def config_signature(config: Any, **resolved: Any) -> dict[str, Any]:
    """The synthesis-relevant config as flat ``{"a.b": value}`` (plus ``resolved`` facts such as the
    number of batches); keys that do not change the images are left out."""
    flat = flatten(to_dict(config))
    flat = {k: v for k, v in flat.items() if not any(k == u or k.startswith(u + ".") for u in UNSIGNED_KEYS)}
    return {**flat, **{f"resolved.{k}": v for k, v in resolved.items()}}


def _digest(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    On any ``OSError`` the temp file is removed and ``SynthWriteError`` names the path.
    """
    try:
        replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as error:
        raise SynthWriteError(f"could not write {path}: {error} (disk full or not writable?)") from error


def png_bytes(image: np.ndarray) -> bytes:
    """``[H, W, 3]`` uint8 -> PNG file bytes (deterministic for the same pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Record:
    """One image to save: ``file`` relative to ``<out>``, ``pixels [H, W, 3]`` uint8, its manifest ``row``."""

    file: str
    pixels: np.ndarray
    row: dict[str, Any]


class DatasetWriter:
    """Writes batches of images and manifest parts into ``root``; see the module docstring."""

    def __init__(self, root: str | Path, class_names: Iterable[str], *, started: float | None = None) -> None:
        """``started``: the ``time.perf_counter()`` this process's work began (default: now), from
        which its first batch's seconds are counted."""
        self.root = Path(root)
        self.class_names = tuple(class_names)
        self._clock = time.perf_counter() if started is None else started
        self._redone = 0.0  # seconds spent redoing written rounds since the last written batch
        self._lock: FolderLock | None = None

    def part_path(self, batch: int) -> Path:
        return self.root / "parts" / f"{batch:06d}.jsonl"

    def is_done(self, batch: int) -> bool:
        return self.part_path(batch).is_file()

    def file_for(self, index: int, k: int, step: int | None = None) -> str:
        """Relative path of sample ``index`` of class ``k`` (an intermediate when ``step`` is given)."""
        name = f"{index:07d}.png" if step is None else f"{index:07d}_s{step:03d}.png"
        return f"images/{class_dir(k, self.class_names[k])}/{name}"

    def state(self, signature: dict[str, Any], *, overwrite: bool = False) -> str:
        """What the folder holds, read only: ``"new"`` (absent or empty), ``"same"`` (a dataset of this
        synthesis config: resumable) or ``"replace"`` (another config's dataset, with ``overwrite``).

        Raises ``ConfigError`` for another config's dataset without ``overwrite`` (naming the differing
        keys; one without a finished batch is ``"replace"`` anyway: nothing of it is lost) and for a
        non-empty folder that is not a synthetic dataset.
        """
        sig_file = self.root / SIGNATURE_FILE
        if sig_file.is_file():
            old = json.loads(sig_file.read_text())
            if old.get("digest") == _digest(signature):
                return "same"
            if not overwrite and any((self.root / "parts").glob("*.jsonl")):
                raise ConfigError(
                    f"{self.root} holds a dataset made with another config; differing keys: "
                    f"{describe_changes(old.get('config', {}), signature) or '(unknown)'}. Use another output folder, "
                    f"or overwrite=True (--overwrite) to delete it and start again"
                )
            return "replace"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root} is a file, not a folder; choose a new or empty output folder")
        foreign = sorted(
            p.name
            for p in (self.root.iterdir() if self.root.is_dir() else ())
            if p.name not in OWN_NAMES and p.name[0] != "."
        )
        if foreign and not overwrite:
            raise ConfigError(
                f"{self.root} is not empty ({', '.join(foreign[:3])}...) and is not a synthetic dataset "
                f"folder; choose a new or empty output folder"
            )
        return "new"

    def prepare(self, config: Any, signature: dict[str, Any], *, overwrite: bool = False) -> None:
        """Create the folder, or check that it was made with the same synthesis config (see ``state``),
        and lock it for this process until ``release`` (or its exit).

        ``overwrite`` deletes another config's dataset files (only those this writer makes) and starts
        afresh. Raises ``FolderBusyError`` while another process writes the folder with another config
        (or replaces it).
        """
        self.state(signature, overwrite=overwrite)  # refuses before anything is created
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = FolderLock(self.root)
        except OSError as error:
            raise SynthWriteError(f"cannot create the dataset folder {self.root}: {error}") from error
        if not self._lock.hold():
            # another process writes it: only a shard of this very config may join
            same = self.state(signature, overwrite=overwrite) == "same"
            if not (same and self._lock.share()):
                self.release()
                raise FolderBusyError(
                    f"{self.root} is being written by another diffdfkd process (it holds "
                    f"{self.root / '.lock'}); wait for it to finish, or choose another output folder"
                )
            return
        state = self.state(signature, overwrite=overwrite)  # again, now that no one else writes
        if state == "replace":
            self._clear()
        body = {"digest": _digest(signature), "config": signature}
        atomic_write(self.root / SIGNATURE_FILE, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
        atomic_write(
            self.root / "classes.json", (json.dumps(list(self.class_names), indent=1) + "\n").encode()
        )
        for sub in ("images", "parts"):
            (self.root / sub).mkdir(exist_ok=True)
        write_run_info(self.root, config)
        self._lock.share()  # shards of this config may join now

    def release(self) -> None:
        """Let other processes write the folder (also done by this process's exit)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def drop_damaged(self, batches: Iterable[int]) -> dict[int, list[str]]:
        """Mark finished batches whose files are missing or damaged (size or sha256 differ from the
        manifest) as not done, by removing their part, so that they are made again; returns the
        problems per dropped batch."""
        dropped = {}
        for batch in batches:
            if self.is_done(batch) and (problems := damaged_files(self.root, batch)):
                self.part_path(batch).unlink()
                dropped[batch] = problems
        return dropped

    def _clear(self) -> None:
        for name in ("images", "parts", "seconds", "tmp"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in ("manifest.jsonl", "summary.json", SIGNATURE_FILE, "classes.json"):
            (self.root / name).unlink(missing_ok=True)

    def redone(self, seconds: float) -> None:
        """Count ``seconds`` spent redoing a written round as the resume's, not the next batch's: they
        are written to that batch's ``seconds/<batch>.redo.txt`` instead of its ``seconds/<batch>.txt``."""
        self._redone += seconds
        self._clock += seconds

    def write_batch(self, batch: int, records: list[Record]) -> None:
        """Write the batch's PNGs, then its manifest part (each atomically); the part marks it done."""
        tmp_dir = self.root / "tmp" / f"{batch:06d}"
        shutil.rmtree(tmp_dir, ignore_errors=True)  # what a killed run of this batch left
        try:
            tmp_dir.mkdir(parents=True)
            for record in records:
                target = self.root / record.file
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = tmp_dir / target.name
                data = png_bytes(record.pixels)
                record.row |= {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                staged.write_bytes(data)
                os.replace(staged, target)
            lines = "".join(json.dumps(r.row, separators=(",", ":")) + "\n" for r in records)
            now = time.perf_counter()
            (self.root / "seconds").mkdir(exist_ok=True)
            timings = {f"{batch:06d}.txt": now - self._clock}
            if self._redone:
                timings[f"{batch:06d}.redo.txt"] = self._redone
            for name, seconds in timings.items():
                staged = tmp_dir / name
                staged.write_text(f"{seconds:.3f}\n")
                os.replace(staged, self.root / "seconds" / name)
            staged = tmp_dir / "part.jsonl"
            staged.write_text(lines)
            os.replace(staged, self.part_path(batch))
            self._clock, self._redone = now, 0.0
        except OSError as error:
            raise SynthWriteError(
                f"could not write batch {batch} into {self.root}: {error} (disk full or not writable?); "
                f"rerun the same command to redo it"
            ) from error
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def dataset_file(root: str | Path, name: Any) -> Path:
    """The file a manifest row names (``images/...``, relative to the dataset ``root``); refused, before
    anything is opened, when it is not a relative path that stays inside ``root`` (``..``, an absolute
    path, or a link out of it)."""
    root = Path(root)
    relative = Path(name) if isinstance(name, str) else None
    if relative is None or relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise DatasetFolderError(
            f"the manifest of {root} names the file {name!r}, which is not a path inside the dataset; "
            f"a dataset written by diffdfkd names only files under images/ (remake it with `diffdfkd synthesize`)"
        )
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise DatasetFolderError(
            f"the manifest of {root} names {name!r}, which links outside the dataset; a dataset written by "
            f"diffdfkd holds its own files (remake it with `diffdfkd synthesize`)"
        )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a manifest (or manifest part) ``path``; a line that is no JSON object (a truncated
    file) is a ``DatasetFolderError`` naming the line."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise DatasetFolderError(
                f"line {number} of {path} is not a JSON manifest row (the file is truncated or damaged); "
                f"rerun `diffdfkd synthesize` with the same config: it rewrites the manifest from its parts"
            )
        rows.append(row)
    return rows


def file_problem(root: Path, row: dict[str, Any]) -> str | None:
    """What is wrong with the file of manifest ``row`` (missing, or size / sha256 differ), else None.
    A row naming a path outside the dataset is refused (``dataset_file``)."""
    path = dataset_file(root, row.get("file"))
    if not path.is_file():
        return f"{row['file']} is missing"
    if "bytes" in row and path.stat().st_size != row["bytes"]:
        return f"{row['file']} has {path.stat().st_size} bytes, the manifest says {row['bytes']}"
    if "sha256" in row and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
        return f"{row['file']} differs from the manifest's sha256"
    return None


def damaged_files(root: str | Path, batch: int) -> list[str]:
    """The problems of the files listed in a finished batch's manifest part (empty: all intact)."""
    root = Path(root)
    try:
        rows = read_jsonl(root / "parts" / f"{batch:06d}.jsonl")
    except DatasetFolderError as error:
        return [str(error)]
    problems = (file_problem(root, row) for row in rows)
    return [p for p in problems if p is not None]


def num_batches(root: str | Path) -> int:
    """The number of batches of the dataset in ``root``, from its signature."""
    sig_file = Path(root) / SIGNATURE_FILE
    if not sig_file.is_file():
        raise DatasetFolderError(
            f"{root} has no {SIGNATURE_FILE}: not a dataset made by `diffdfkd synthesize`"
        )
    return int(json.loads(sig_file.read_text())["config"]["resolved.num_batches"])


def missing_batches(root: str | Path) -> list[int]:
    """Batches of ``root`` whose manifest part does not exist yet."""
    parts = Path(root) / "parts"
    return [b for b in range(num_batches(root)) if not (parts / f"{b:06d}.jsonl").is_file()]


def merge_manifest(root: str | Path) -> Path:
    """Concatenate every batch's part into ``<root>/manifest.jsonl`` (atomically) and return its path.

    Raises ``IncompleteDatasetError`` when some batch is not done yet (another shard still running,
    or a run that stopped: rerun it).
    """
    root = Path(root)
    missing = missing_batches(root)
    if missing:
        raise IncompleteDatasetError(
            f"{root}: {len(missing)} of {num_batches(root)} batches are not done yet (first: {missing[:5]}); "
            f"run the missing shards or rerun the same command"
        )
    parts = [root / "parts" / f"{b:06d}.jsonl" for b in range(num_batches(root))]
    atomic_write(root / "manifest.jsonl", b"".join(p.read_bytes() for p in parts))
    tmp = root / "tmp"
    if tmp.is_dir() and not any(tmp.iterdir()):  # every batch removed its own temp folder
        with contextlib.suppress(FileNotFoundError):  # another shard merging at the same moment
            tmp.rmdir()
    return root / "manifest.jsonl"
