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
import io
import json
import re
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffdfkd.errors import UserError
from diffdfkd.worlds import emoji

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
RENDER_PX = 64  # SVGs are rasterised at this size, then resized to the world's 32 px like the PNGs
SKIN_TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}
# code points that only say who (gender, age) or which skin tone: dropped from the stem's code key
_WHO = {"2640", "2642", "FE0F", "200D", *SKIN_TONES}
_PERSON = {"1F468", "1F469", "1F9D1", "1F466", "1F467", "1F9D2", "1F474", "1F475", "1F9D3"}
_WHO_WORDS = {"man", "woman", "person", "men", "women", "people", "boy", "girl", "child", "older", "old"}
_WHO_WORDS |= {"mr.", "mrs.", "mx", "santa", "male", "female", "merman", "mermaid", "merperson"}


class EmojiBuildError(UserError):
    """The data build cannot go on (npm missing, a tarball that fails its integrity check, ...)."""


@dataclass(frozen=True)
class Item:
    """One emoji image to render: a base emoji or one of its single-tone skin variants."""

    code: str  # unified code points, e.g. "1F3C3-1F3FB-200D-2642-FE0F"
    name: str  # CLDR name, e.g. "man running: light skin tone"
    label: int  # index into emoji.CLASS_NAMES
    base_name: str  # the base emoji's CLDR name ("man running")
    tone: str  # "" or a key of SKIN_TONES
    twemoji_file: str  # emoji-datasource's image file name, shared by Twemoji and Noto
    has_google: bool


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
# index
# ----------------------------------------------------------------------------------------------


def _names_by_code(openmoji_json: Path) -> dict[str, str]:
    """Code points (without FE0F) -> CLDR name, from OpenMoji's data."""
    table = json.loads(openmoji_json.read_text(encoding="utf-8"))
    return {_strip_fe0f(e["hexcode"]): e["annotation"] for e in table if e.get("annotation")}


def _strip_fe0f(code: str) -> str:
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def picked_tone(base_name: str) -> str:
    """The one skin tone kept beside an emoji's default (yellow) image: fixed by a hash of its name.

    Keeping all five would make the people classes six times as large as the others (and their test
    images near-duplicates of each other); one tone keeps that to two images per emoji.
    """
    return sorted(SKIN_TONES)[zlib.crc32(base_name.encode()) % len(SKIN_TONES)]


def index_emoji(emoji_json: Path, openmoji_json: Path) -> list[Item]:
    """Every base emoji of a class sub-category and, where it has skin tones, its :func:`picked_tone`
    variant, in emoji.json order."""
    names = _names_by_code(openmoji_json)
    classes = {sub: i for i, subs in enumerate(emoji.CLASS_SUBCATEGORIES) for sub in subs}
    items = []
    for e in json.loads(emoji_json.read_text(encoding="utf-8")):
        label = classes.get(e["subcategory"])
        base_name = names.get(_strip_fe0f(e["unified"]))
        if label is None or base_name is None or base_name.lower() in emoji.EXCLUDED_NAMES:
            continue
        items.append(Item(e["unified"], base_name, label, base_name, "", e["image"], e["has_img_google"]))
        tone = picked_tone(base_name)
        variant = (e.get("skin_variations") or {}).get(tone)
        if variant is not None:
            name = f"{base_name}: {SKIN_TONES[tone].replace('-', ' ')} skin tone"
            items.append(
                Item(
                    variant["unified"],
                    name,
                    label,
                    base_name,
                    tone,
                    variant["image"],
                    variant["has_img_google"],
                )
            )
    return items


def _code_key(code: str) -> str:
    parts = [p for p in code.upper().split("-") if p not in _WHO]
    return "-".join("P" if p in _PERSON else p for p in parts)


def _name_key(base_name: str) -> str:
    words = re.sub(r"[:,]", " ", base_name.lower().replace("facing right", "")).split()
    return " ".join(w for w in words if w not in _WHO_WORDS) or base_name.lower()


def assign_stems(items: list[Item]) -> list[str]:
    """One stem per item: items joined by a shared code key or name key (union-find) share it.

    The code key drops gender, skin-tone and ZWJ code points and maps man / woman / person (and boy,
    girl, older ...) to one symbol, so "man running", "woman running" and "person running" and all their
    skin tones meet; the name key drops those words from the CLDR name ("Mrs. Claus" and "Santa Claus"
    meet at "claus"). The stem is the group's first member's name key.
    """
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, item in enumerate(items):
        for key in ("c:" + _code_key(item.code), "n:" + _name_key(item.base_name)):
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return [_name_key(items[find(i)].base_name) for i in range(len(items))]


# ----------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------


def _to_world_size(rgba) -> np.ndarray:
    """An RGBA Pillow image -> ``[32, 32, 3]`` uint8 on white, Lanczos-resized (antialiased)."""
    from PIL import Image

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")
    size = emoji.IMAGE_SIZE
    return np.asarray(rgb.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def render_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return _to_world_size(im)


def render_svg(path: Path) -> np.ndarray:
    import resvg_py
    from PIL import Image

    png = resvg_py.svg_to_bytes(svg_path=str(path), width=RENDER_PX, height=RENDER_PX)
    with Image.open(io.BytesIO(bytes(png))) as im:
        return _to_world_size(im)


def _fluent_name(item: Item) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", item.base_name.lower()).strip("-")
    return stem


def style_files(folders: dict[str, Path], item: Item, has_tones: bool) -> dict[str, Path]:
    """The file of each style that exists for ``item`` (style -> path)."""
    files = {}
    twitter = folders["emoji-datasource-twitter"] / "img" / "twitter" / "64" / item.twemoji_file
    google = folders["emoji-datasource-google"] / "img" / "google" / "64" / item.twemoji_file
    files["twemoji"] = twitter
    if item.has_google:
        files["noto"] = google
    hexes = {item.code.upper(), _strip_fe0f(item.code)}
    for style, sub in (("openmoji_color", "color"), ("openmoji_black", "black")):
        for h in sorted(hexes):
            path = folders["openmoji"] / sub / "svg" / f"{h}.svg"
            if path.exists():
                files[style] = path
                break
    fluent = _fluent_name(item)
    suffix = f"-{SKIN_TONES[item.tone]}" if item.tone else ("-default" if has_tones else "")
    for style, sub in (
        ("fluent_flat", "flat"),
        ("fluent_modern", "modern"),
        ("fluent_high_contrast", "high-contrast"),
    ):
        for name in (fluent + suffix, fluent):
            path = folders["fluentui-emoji"] / "icons" / sub / f"{name}.svg"
            if path.exists():
                files[style] = path
                break
    return {s: p for s, p in files.items() if p.exists()}


def render_all(
    folders: dict[str, Path], items: list[Item], progress: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """style -> (images ``[n, 32, 32, 3]`` uint8, item indices ``[n]``) for every style of emoji.STYLES."""
    toned = {it.base_name for it in items if it.tone}
    out: dict[str, tuple[list, list]] = {s: ([], []) for s in emoji.STYLES}
    for i, item in enumerate(tqdm(items, desc="render emoji", disable=not progress)):
        for style, path in style_files(folders, item, item.base_name in toned).items():
            render = render_svg if path.suffix == ".svg" else render_png
            out[style][0].append(render(path))
            out[style][1].append(i)
    return {
        s: (np.stack(imgs) if imgs else np.zeros((0, 32, 32, 3), np.uint8), np.asarray(idx, np.int64))
        for s, (imgs, idx) in out.items()
    }


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
