"""The emoji world's images: which emoji (index), their stems, each style's rendering.

Used by :mod:`diffdfkd.worlds.emoji_build` (the fetch, split and save), whose docstring gives the
steps: the index (2), the rendering (3) and the stems the split (4) keeps whole.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffdfkd.worlds import emoji

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
