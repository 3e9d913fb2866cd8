"""The emoji world: its data build on a tiny fixture (no network), the shipped splits, captions."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffdfkd.worlds import emoji
from diffdfkd.worlds import emoji_build as B
from diffdfkd.worlds import emoji_render as R

# sha256 of the shipped PRIVATE splits: a rebuild that changes them must update this on purpose
SHIPPED_PRIVATE_SHA256 = "154908fdb517fb1b4a2f36505b86e9fc5d68cd83e31953ca3cee98e6394312e3"

# (unified code, CLDR name, sub-category, skin tones?)
FIXTURE = [
    ("1F3C3", "person running", "person-activity", True),
    ("1F3C3-200D-2642-FE0F", "man running", "person-activity", True),
    ("1F3C3-200D-2640-FE0F", "woman running", "person-activity", True),
    ("1F436", "dog face", "animal-mammal", False),
    ("1F431", "cat face", "animal-mammal", False),
    ("1F408", "cat", "animal-mammal", False),
    ("1F34E", "red apple", "food-fruit", False),
    ("1F350", "pear", "food-fruit", False),
    ("26FD", "fuel pump", "transport-ground", False),  # excluded by name
    ("1F4A9", "pile of poo", "face-costume", False),  # a sub-category of no class
]
SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="{r}" fill="#{c}"/></svg>'


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent: composited on white
    im.paste((*colour, 255), (16, 16, 48, 48))
    im.save(path)


def lay_out_fixture(root: Path) -> dict[str, Path]:
    """Package folders as the npm tarballs unpack: Twemoji and Noto PNGs, OpenMoji colour SVGs only."""
    folders = {name: root / name for name in B.PACKAGES}
    entries, annotations = [], []
    for k, (code, name, sub, toned) in enumerate(FIXTURE):
        image = code.lower() + ".png"
        entry = {"unified": code, "image": image, "subcategory": sub, "has_img_google": True}
        variants = {}
        if toned:
            tone = R.picked_tone(name)
            v_code = code.split("-")[0] + "-" + tone + code[len(code.split("-")[0]) :]
            variants[tone] = {"unified": v_code, "image": v_code.lower() + ".png", "has_img_google": True}
            annotations.append({"hexcode": R._strip_fe0f(v_code), "annotation": f"{name}: tone"})
        entry["skin_variations"] = variants or None
        entries.append(entry)
        annotations.append({"hexcode": R._strip_fe0f(code), "annotation": name})
        for e in [entry, *variants.values()]:
            colour = (20 * k % 255, 100, 200)
            _png(folders["emoji-datasource-twitter"] / "img" / "twitter" / "64" / e["image"], colour)
            _png(folders["emoji-datasource-google"] / "img" / "google" / "64" / e["image"], colour[::-1])
            svg = folders["openmoji"] / "color" / "svg" / f"{R._strip_fe0f(e['unified'])}.svg"
            svg.parent.mkdir(parents=True, exist_ok=True)
            svg.write_text(SVG.format(r=10 + 2 * k, c=f"{(40 * k) % 256:02x}8040"))
    (folders["emoji-datasource"]).mkdir(parents=True, exist_ok=True)
    (folders["emoji-datasource"] / "emoji.json").write_text(json.dumps(entries))
    (folders["openmoji"] / "data").mkdir(parents=True, exist_ok=True)
    (folders["openmoji"] / "data" / "openmoji.json").write_text(json.dumps(annotations))
    return folders


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    folders = lay_out_fixture(root / "packages")
    summary = B.build_emoji_data(
        root / "cache", ship_to=root / "private.npz", fetch=lambda _: folders, progress=False
    )
    return root, summary


def test_fixture_build_renders_every_style_present_and_splits_by_stem(built):
    root, summary = built
    # 8 class emoji (fuel pump excluded, pile of poo in no class) + one picked tone of each of 3 runners
    assert summary["items"] == 11
    assert summary["per_style"]["twemoji"] == 11 and summary["per_style"]["openmoji_color"] == 11
    assert summary["per_style"]["fluent_flat"] == 0  # no Fluent files in the fixture
    with np.load(root / "private.npz", allow_pickle=False) as data:
        train, test = set(data["train_stems"]), set(data["test_stems"])
        assert not train & test  # no stem on both sides
        assert "running" in train | test and data["train_images"].dtype == np.uint8
        images = np.concatenate([data["train_images"], data["test_images"]])
        assert images.shape[1:] == (32, 32, 3)
        assert (images[:, 0, 0] == 255).all()  # transparent corners composited on white
        names = set(data["train_names"]) | set(data["test_names"])
    assert "fuel pump" not in names and "pile of poo" not in names
    # all runners (three genders, each with its tone) share the stem, so they lie on one side together
    runner_side = [("running" in train), ("running" in test)]
    assert runner_side.count(True) == 1


def test_fixture_build_is_byte_identical_when_rerun(built, tmp_path):
    root, _ = built
    folders = {name: root / "packages" / name for name in B.PACKAGES}
    B.build_emoji_data(
        tmp_path / "cache", ship_to=tmp_path / "private.npz", fetch=lambda _: folders, progress=False
    )
    assert (tmp_path / "private.npz").read_bytes() == (root / "private.npz").read_bytes()


def test_stems_join_genders_tones_and_names():
    items = [
        R.Item(code, name, 0, name, "", "", True)
        for code, name in [
            ("1F3C3", "person running"),
            ("1F3C3-200D-2642-FE0F", "man running"),
            ("1F3C3-1F3FD-200D-2640-FE0F", "woman running: medium skin tone"),
            ("1F385", "Santa Claus"),
            ("1F936", "Mrs. Claus"),
            ("1F436", "dog face"),
        ]
    ]
    stems = R.assign_stems(items)
    assert stems[0] == stems[1] == stems[2] and stems[3] == stems[4]
    assert len({stems[0], stems[3], stems[5]}) == 3


def test_fetch_checks_integrity_before_use(tmp_path, monkeypatch):
    monkeypatch.setattr(B.shutil, "which", lambda _: None)  # a fetch must not reach npm here
    good = tmp_path / "x-1.0.0.tgz"
    good.write_bytes(b"tarball bytes")
    pinned = {"x": ("1.0.0", B.integrity_of(good))}
    assert B.fetch_packages(tmp_path, pinned) == {"x": good}
    good.write_bytes(b"tampered bytes")
    with pytest.raises(B.EmojiBuildError, match="integrity"):
        B.fetch_packages(tmp_path, pinned)
    assert not good.exists()  # a tampered tarball is deleted, never opened
    with pytest.raises(B.EmojiBuildError, match="npm"):
        B.fetch_packages(tmp_path, pinned)  # and a missing one needs npm, which says so


def test_unpack_keeps_regular_files_inside_the_folder(tmp_path):
    tgz = tmp_path / "p.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in (("package/package.json", b"{}"), ("package/img/a.png", b"png")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
        link = tarfile.TarInfo("package/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    folder = B.unpack({"p": tgz}, tmp_path / "out")["p"]
    assert (folder / "img" / "a.png").read_bytes() == b"png"
    assert not (folder / "evil").exists()


def test_shipped_private_splits():
    digest = hashlib.sha256(emoji.PRIVATE_FILE.read_bytes()).hexdigest()
    assert digest == SHIPPED_PRIVATE_SHA256
    train_x, train_y = emoji.load_private("train")
    test_x, test_y = emoji.load_private("test")
    assert train_x.shape[1:] == test_x.shape[1:] == (3, 32, 32)
    assert 0.0 <= float(test_x.min()) and float(test_x.max()) <= 1.0
    # one accuracy on the test split has a standard error of about 2 points: sqrt(0.6 * 0.4 / n)
    assert len(test_y) >= 550 and (0.6 * 0.4 / len(test_y)) ** 0.5 <= 0.021
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(len(emoji.CLASS_NAMES)))
    data = emoji._private()
    assert not set(data["train_stems"]) & set(data["test_stems"])
    assert emoji.PRIVATE_FILE.stat().st_size < 2_500_000


def test_emoji_captions_name_class_always_emoji_and_style_by_their_shares():
    from diffdfkd.worlds.captions import EmojiTrainingSet
    from diffdfkd.worlds.generator_parts import EMOJI

    n = 4000
    labels = torch.arange(n) % len(emoji.CLASS_NAMES)
    styles = torch.arange(n) % len(emoji.PUBLIC_STYLES)
    names = [f"thing {i % 7}" for i in range(n)]
    data = EmojiTrainingSet(EMOJI, torch.zeros(n, 3, 1, 1), labels, styles, names)
    ids = data.caption_ids(torch.arange(n), styles, torch.Generator().manual_seed(0))
    texts = data.tokenizer.batch_decode(ids, skip_special_tokens=True)
    empty = sum(t == "" for t in texts) / n
    free = sum(t == "an emoji" for t in texts) / n
    classed = [(t, i) for i, t in enumerate(texts) if t not in ("", "an emoji")]
    assert all(emoji.CLASS_NAMES[int(labels[i])] in t.split() for t, i in classed)  # the class, always
    named = sum("thing" in t for t, _ in classed) / len(classed)
    styled = sum(emoji.STYLE_PHRASES[emoji.PUBLIC_STYLES[int(styles[i])]] in t for t, i in classed) / len(
        classed
    )
    assert abs(empty - EMOJI.p_empty) < 0.02 and abs(free - 0.9 * (1 - EMOJI.p_class)) < 0.015
    assert abs(named - EMOJI.p_name) < 0.03 and abs(styled - EMOJI.p_look) < 0.03
    unk = data.tokenizer.unk_token_id
    assert unk not in data.tokenizer("an emoji, mammal, black line art").input_ids  # prompts users write


@pytest.mark.slow  # the emoji world end to end (the digits run is tests/test_pipeline.py)
def test_emoji_config_runs_end_to_end(tmp_path):
    """`diffdfkd run --config configs/emoji.yaml` with tiny budgets: guided synthesis with the shipped
    generator, the online student, KD of the world's student, the PRIVATE test split, the style mix."""
    from diffdfkd.bench import WORLD_CONFIGS
    from diffdfkd.config import load_config
    from diffdfkd.pipeline import run_experiment

    config = load_config(
        WORLD_CONFIGS["emoji"],
        [
            f"out_dir={tmp_path / 'run'}",
            "synth.images_per_class=4",
            "generator.num_steps=2",
            "online.warmup_rounds=1",
            "distill.epochs=1",
            "distill.batch_size=16",
        ],
    )
    summary = run_experiment(config, progress=False)
    assert summary["synthetic_images"] == 48 and summary["test_data"] == "emoji private:test"
    assert 0.0 <= summary["student_top1"] <= 1.0 and summary["teacher_top1"] > 0.5
    assert set(summary["look_mix_of_synthetic"]) == set(emoji.PUBLIC_STYLES)
    assert (tmp_path / "run" / "report.html").is_file()
