"""Building the emoji world's data: pinned npm packages -> 32x32 RGB arrays, one per art style.

``diffdfkd world build-data --world emoji`` runs :func:`build_emoji_data`. Nothing else in the project
fetches anything: the demo and the tests read the shipped PRIVATE splits (``weights/emoji_private.npz``)
and, where they need them, the PUBLIC arrays this build leaves in the cache.

1. Fetch. ``npm pack NAME@VERSION`` (npm's own client) for each package of :data:`PACKAGES`, each
   tarball checked against its pinned sha512 integrity before it is opened.
2. Index. ``emoji-datasource``'s ``emoji.json`` gives every emoji's code points, Unicode category and
   sub-category, and its single-tone skin variants; OpenMoji's ``openmoji.json`` gives the CLDR name
   ("dog face"), which is also how Fluent names its files. A sub-category belongs to at most one class
   of :data:`~diffdfkd.worlds.emoji.CLASS_SUBCATEGORIES`; a few emoji that sit in the wrong group are
   dropped (:data:`~diffdfkd.worlds.emoji.EXCLUDED_NAMES`).
3. Render. Each style's image of each emoji, composited on white and resized to 32x32 with a Lanczos
   filter (antialiased): PNGs (Twemoji, Noto, 64 px) with Pillow, SVGs (OpenMoji, Fluent) with resvg
   (``resvg-py``) at 64 px. resvg renders Fluent's filters and gradients; cairosvg was 1.5x faster but
   dropped the blur filters (a mean absolute difference of up to 32 grey levels on Fluent's gradient
   style), so resvg it is.
4. Split. PRIVATE (Twemoji) by *stem*: an emoji, its skin tones and its man / woman / person versions
   share one stem (union of a code-point key without gender and skin-tone code points and a name key
   without gender words), and a stem lies wholly in train or in test (:func:`assign_stems`).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from diffdfkd.errors import UserError
from diffdfkd.worlds import emoji
from diffdfkd.worlds.emoji_render import assign_stems, index_emoji, render_all

# npm package -> (pinned version, integrity as npm records it: sha512, base64)
PACKAGES: dict[str, tuple[str, str]] = {
    "emoji-datasource": (
        "16.0.0",
        "sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0Vfc8jgLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg==",
    ),
    "emoji-datasource-twitter": (
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
    "emoji-datasource-google": (
        "16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    ),
    "openmoji": (
        "17.0.0",
        "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
    ),
    "fluentui-emoji": (
        "1.3.0",
        "sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==",
    ),
}


class EmojiBuildError(UserError):
    """The data build cannot go on (npm missing, a tarball that fails its integrity check, ...)."""


# ----------------------------------------------------------------------------------------------
# fetch
# ----------------------------------------------------------------------------------------------


def integrity_of(path: Path) -> str:
    """npm's integrity string of a file: ``sha512-`` + base64 of its SHA-512 digest."""
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def fetch_packages(dest: Path, packages: dict[str, tuple[str, str]] = PACKAGES) -> dict[str, Path]:
    """``npm pack`` each pinned package into ``dest`` (kept: a rerun fetches nothing) and check it.

    Returns package -> tarball path. Raises :class:`EmojiBuildError` when npm is missing, a pack
    fails, or a tarball's integrity differs from the pinned one (the file is then deleted).
    """
    dest.mkdir(parents=True, exist_ok=True)
    tarballs = {}
    for name, (version, integrity) in packages.items():
        path = dest / f"{name}-{version}.tgz"
        if not path.exists():
            if shutil.which("npm") is None:
                raise EmojiBuildError("the emoji data build needs npm (Node.js's package client) on PATH")
            done = subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--silent"],
                cwd=dest,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0 or not path.exists():
                raise EmojiBuildError(f"npm pack {name}@{version} failed: {done.stderr.strip()[-500:]}")
        found = integrity_of(path)
        if found != integrity:
            path.unlink()
            raise EmojiBuildError(f"{path.name}: integrity {found} differs from the pinned {integrity}")
        tarballs[name] = path
    return tarballs


def unpack(tarballs: dict[str, Path], dest: Path) -> dict[str, Path]:
    """Extract each tarball's ``package/`` into ``dest/<name>`` (regular files only, no links or
    paths outside it); returns package -> folder. A folder already there is reused."""
    folders = {}
    for name, tgz in tarballs.items():
        folder = dest / name
        if not (folder / "package.json").exists():
            tmp = dest / f".{name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(tgz) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/")]
                for m in members:
                    m.name = m.name[len("package/") :]
                tar.extractall(tmp, members=members, filter="data")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        folders[name] = folder
    return folders


# ----------------------------------------------------------------------------------------------
# split and save
# ----------------------------------------------------------------------------------------------


def split_stems(stems: Iterable[str], labels: Iterable[int], test_fraction: float, seed: int) -> set[str]:
    """The test stems: per class, a seeded ``test_fraction`` of that class's stems (at least one)."""
    by_class: dict[int, list[str]] = {}
    for stem, label in zip(stems, labels, strict=True):
        bucket = by_class.setdefault(int(label), [])
        if stem not in bucket:
            bucket.append(stem)
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for label in sorted(by_class):
        group = sorted(by_class[label])
        k = max(1, round(test_fraction * len(group)))
        test.update(group[j] for j in rng.permutation(len(group))[:k])
    return test


def build_emoji_data(
    cache_dir: Path | None = None,
    *,
    ship_to: Path | None = None,
    packages: dict[str, tuple[str, str]] = PACKAGES,
    fetch: Callable[[Path], dict[str, Path]] | None = None,
    progress: bool = True,
) -> dict:
    """Fetch, index, render and split; returns a summary (counts per style and class).

    Writes ``<cache>/public.npz`` (every PUBLIC style's images, labels, names and stems) and the
    PRIVATE splits to ``ship_to`` (default: the shipped ``weights/emoji_private.npz``). ``fetch``
    replaces the npm step (tests pass a function that lays out a tiny fixture).
    """
    cache = Path(cache_dir) if cache_dir is not None else emoji.cache_dir()
    ship_to = Path(ship_to) if ship_to is not None else emoji.PRIVATE_FILE
    if fetch is None:
        tarballs = fetch_packages(cache / "npm", packages)
        folders = unpack(tarballs, cache / "packages")
    else:
        folders = fetch(cache)
    items = index_emoji(
        folders["emoji-datasource"] / "emoji.json", folders["openmoji"] / "data" / "openmoji.json"
    )
    stems = assign_stems(items)
    rendered = render_all(folders, items, progress)
    labels = np.asarray([it.label for it in items], np.int64)
    names = np.asarray([it.name for it in items])
    stem_arr = np.asarray(stems)
    # the split is over the PRIVATE style's stems, so every test stem has a Twemoji image
    priv_images, priv_idx = rendered[emoji.PRIVATE_STYLE]
    test_stems = split_stems(stem_arr[priv_idx], labels[priv_idx], emoji.TEST_FRACTION, emoji.SPLIT_SEED)
    is_test = np.asarray([s in test_stems for s in stem_arr[priv_idx]])
    private = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        idx = priv_idx[mask]
        private |= {
            f"{split}_images": priv_images[mask],
            f"{split}_labels": labels[idx],
            f"{split}_names": names[idx],
            f"{split}_stems": stem_arr[idx],
        }
    ship_to.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(ship_to, private)
    public = {}
    for style in emoji.PUBLIC_STYLES:
        images, idx = rendered[style]
        public |= {
            f"{style}_images": images,
            f"{style}_labels": labels[idx],
            f"{style}_names": names[idx],
            f"{style}_stems": stem_arr[idx],
        }
    _save_npz(cache / emoji.PUBLIC_FILE_NAME, public)
    n_classes = len(emoji.CLASS_NAMES)
    return {
        "items": len(items),
        "stems": len(set(stems)),
        "per_style": {s: len(rendered[s][1]) for s in emoji.STYLES},
        "private": {
            split: np.bincount(private[f"{split}_labels"], minlength=n_classes).tolist()
            for split in ("train", "test")
        },
        "private_file": str(ship_to),
        "public_file": str(cache / emoji.PUBLIC_FILE_NAME),
    }


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load(allow_pickle=False)`` reads: deflated, pickle-free (strings are
    fixed-width unicode), with fixed zip timestamps so the same arrays give the same bytes; written whole
    or not at all."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    tmp.replace(path)
