"""Every user mistake of issues 10 and 22 ends in a clear error with exit code 2 (no traceback) before
the work, and the silent wrong results they found give the right result or a refusal.

The user is the careful new one of the issue: their own TorchScript teacher with BatchNorm layers
(7 classes, 24 px input, class names whose alphabetical order is not class order), their own small
diffusers folder with its own tokenizer (``tiny_pipeline_dir``), their own labelled test folder and a
world name of their own. The table runs ``diffdfkd`` commands; most cases fail in the check, before
any sampling or training. ``CASES`` is the contract: each row is the input, the words the message must
hold and the exit code (2 unless given), and no row changes anything outside its output folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffdfkd.cli import main
from diffdfkd.config import load_config
from diffdfkd.synth.dataset import load_image_folder
from diffdfkd.synth.run import synthesize

CLASSES = ("owl", "cat", "emu", "ant", "yak", "fox", "bee")  # sorted: ant, bee, cat, emu, fox, owl, yak


@dataclass(frozen=True)
class User:
    root: Path
    config: Path  # the user's YAML config
    eval_folder: Path
    datasets: dict[str, Path]  # "a", "b": two finished datasets of different seeds; "partial"
    trained: Path  # an out_dir whose student was distilled on dataset "a"


def _teacher() -> torch.nn.Module:
    """A small scripted classifier with BatchNorm whose predictions depend on the image's colour."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, len(CLASSES), 3, padding=1),
        torch.nn.BatchNorm2d(len(CLASSES)),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    return torch.jit.script(model.eval())


def _save_test_folder(folder: Path, teacher: torch.nn.Module, per_class: int = 2) -> None:
    """Plain-coloured 24 px images, filed under the class the teacher predicts where it predicts it
    (so that accuracy depends on matching folders to classes), else under any class."""
    colours = np.random.default_rng(1).integers(0, 256, size=(200, 3), dtype=np.uint8)
    pixels = np.broadcast_to(colours[:, None, None, :], (200, 24, 24, 3))
    with torch.no_grad():
        preds = teacher(torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 255).argmax(1)
    unused = list(range(200))
    for k, name in enumerate(CLASSES):
        chosen = [i for i in unused if preds[i] == k][:per_class]
        chosen += [i for i in unused if i not in chosen][: per_class - len(chosen)]
        (folder / name).mkdir(parents=True)
        for i in chosen:
            unused.remove(i)
            Image.fromarray(np.ascontiguousarray(pixels[i])).save(folder / name / f"{i}.png")


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr); argparse's own errors exit through SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path) -> User:
    root = tmp_path_factory.mktemp("user")
    teacher = _teacher()
    teacher.save(str(root / "teacher.pt"))
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    no_bn = torch.nn.Sequential(
        torch.nn.Conv2d(3, len(CLASSES), 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    torch.jit.script(no_bn.eval()).save(str(root / "no_bn.pt"))
    _save_test_folder(root / "test", teacher)
    config = {
        "world": "mine",
        "eval_folder": str(root / "test"),
        "teacher": {
            "arch": "",
            "weights": str(root / "teacher.pt"),
            "class_names": list(CLASSES),
            "input_size": 24,
        },
        "generator": {"path": str(tiny_pipeline_dir), "num_steps": 3, "prompt": "a photo", "device": "cpu"},
        "synth": {"images_per_class": 2, "batch_size": 4, "group_size": 4, "samples_per_class_in_group": 2},
        "distill": {"student": "cnn_small", "epochs": 1, "batch_size": 4},
    }
    (root / "user.yaml").write_text(yaml.safe_dump(config))
    datasets = {}
    # Unguided (mode none) keeps the fixtures fast; the datasets only need to differ.
    for name, seed, shard in (("a", 0, None), ("b", 1, None), ("partial", 2, (0, 2))):
        overrides = [f"seed={seed}", "guidance.mode=none", f"synth.out_dir={root / name}", f"out_dir={root}"]
        shards = {"shard": shard[0], "num_shards": shard[1]} if shard else {}
        datasets[name] = synthesize(load_config(root / "user.yaml", overrides), progress=False, **shards)
    code = main(
        [
            "distill",
            "--config",
            str(root / "user.yaml"),
            "--data",
            str(datasets["a"]),
            f"out_dir={root / 'trained'}",
        ]
    )
    assert code == 0
    return User(root, root / "user.yaml", root / "test", datasets, root / "trained")


def _eval_copy(user: User, tmp: Path, change: Callable[[Path], None]) -> Path:
    folder = tmp / "eval"
    shutil.copytree(user.eval_folder, folder)
    change(folder)
    return folder


def _damaged_copy(user: User, tmp: Path) -> Path:
    folder = tmp / "damaged"
    shutil.copytree(user.datasets["a"], folder)
    png = next((folder / "images").rglob("*.png"))
    png.write_bytes(png.read_bytes()[:40])  # a truncated PNG
    return folder


def _yaml(tmp: Path, text: str) -> Path:
    (tmp / "bad.yaml").write_text(text)
    return tmp / "bad.yaml"


def _foreign_folder(tmp: Path) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("my own files")
    return tmp / "mine"


class Planted:
    """A pickle whose loading would run a shell command (and leave a marker file): never loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _planted(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Planted(path.parent / "PLANTED_CODE_RAN")}, path)
    return path


def _adapt_with_planted_checkpoint(user: User, tmp: Path) -> list:
    _planted(tmp / "out.partial" / "adapt_checkpoint.pt")  # where a resumed adaptation reads its state
    return ["adapt-generator", "--config", user.config, "--out", tmp / "out", "--steps", "2"]


def _exported_teacher(tmp: Path) -> Path:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, len(CLASSES), 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(2, 3, 24, 24),)), tmp / "teacher.pt2")
    return tmp / "teacher.pt2"


def _truncated_generator(user: User, tmp: Path) -> Path:
    folder = tmp / "generator"
    shutil.copytree(yaml.safe_load(user.config.read_text())["generator"]["path"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    return folder


def _edited_dataset(user: User, tmp: Path, edit: Callable[[Path, list[dict]], None]) -> Path:
    """A copy of dataset "a" whose manifest rows ``edit(folder, rows)`` changed in place."""
    folder = tmp / "edited"
    shutil.copytree(user.datasets["a"], folder)
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    edit(folder, rows)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _point_first_row_at(name: str) -> Callable[[Path, list[dict]], None]:
    def edit(folder: Path, rows: list[dict]) -> None:
        rows[0]["file"] = name

    return edit


def _other_size_image(folder: Path, rows: list[dict]) -> None:
    """The last image replaced by a 16 x 16 one, its row's size and sha256 updated to match."""
    path = folder / rows[-1]["file"]
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    rows[-1] |= {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _truncated_manifest(user: User, tmp: Path) -> Path:
    folder = tmp / "truncated"
    shutil.copytree(user.datasets["a"], folder)
    manifest = folder / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes()[:-40])  # a copy cut in the last line
    return folder


def _read_only_folder(tmp: Path) -> Path:
    """A folder this process cannot write into (root writes through a chmod, not into sysfs)."""
    if os.geteuid() == 0:
        return Path("/sys")
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    return tmp / "ro"


def _a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("not a folder")
    return tmp / "a_file"


def _check(*overrides: str) -> Callable[[User, Path], list]:
    return lambda u, tmp: ["check", "--config", u.config, f"out_dir={tmp / 'out'}", *overrides]


def _distill(data: Callable[[User, Path], Path], *args: str) -> Callable[[User, Path], list]:
    return lambda u, tmp: [
        "distill",
        "--config",
        u.config,
        "--data",
        data(u, tmp),
        f"out_dir={tmp / 'out'}",
        *args,
    ]


# (case, argv(user, tmp_path), words the message must hold[, exit code, 2 unless given])
CASES = [
    ("lr-nan", _check("distill.lr=.nan"), ["distill.lr", "finite"]),
    ("temperature-nan", _check("distill.temperature=.nan"), ["distill.temperature", "finite"]),
    ("step-size-nan", _check("guidance.step_size=.nan"), ["guidance.step_size", "finite"]),
    ("weight-inf", _check("guidance.bn_weight=.inf"), ["guidance.bn_weight", "finite"]),
    ("unknown-key", _check("distill.lrr=0.1"), ["distill.lrr", "valid keys", "lr"]),
    (
        "yaml-syntax-error",
        lambda u, tmp: ["check", "--config", _yaml(tmp, "seed: [1\n")],
        ["not valid YAML", "line"],
    ),
    (
        "duplicate-top-level-key",
        lambda u, tmp: [
            "check",
            "--config",
            _yaml(tmp, "synth:\n  batch_size: 4\nsynth:\n  group_size: 4\n"),
        ],
        ["duplicate key 'synth'"],
    ),
    ("mean-std-length", _check("teacher.mean=[0.5, 0.5]"), ["teacher.mean", "one value per input channel"]),
    ("input-size-0", _check("teacher.input_size=0"), ["teacher.input_size=0", "> 0"]),
    (
        "in-channels-1-with-rgb-stats",
        _check("teacher.in_channels=1"),
        ["in_channels=1", "teacher.mean=[0.5]"],
    ),
    (
        "prompt-placeholder",
        _check("generator.prompt_template=a photo of a {animal}"),
        ["unknown placeholders", "animal"],
    ),
    (
        "prompt-style-without-styles",
        _check("generator.prompt_template=a {style} of a {label}"),
        ["names {style}", "generator.prompt_styles is empty"],
    ),
    (
        "prompt-styles-without-style",
        _check("generator.prompt_template=a photo of a {label}", "generator.prompt_styles=[sketch]"),
        ["must contain '{style}'", "generator.prompt_styles is set"],
    ),
    (
        "prompt-styles-empty-phrase",
        _check("generator.prompt_template=a {style} of a {label}", 'generator.prompt_styles=[sketch, " "]'),
        ["generator.prompt_styles", "empty phrase"],
    ),
    (
        "teacher-cannot-take-the-input",
        _check("teacher.in_channels=1", "teacher.mean=[0.5]", "teacher.std=[0.5]"),
        ["cannot take inputs of shape [1, 1, 24, 24]", "teacher.in_channels"],
    ),
    ("single-class", _check("teacher.class_names=[owl]"), ["at least two classes"]),
    ("seed-negative", _check("seed=-1"), ["seed=-1"]),
    (
        "steps-beyond-scheduler",
        _check("generator.num_steps=5000"),
        ["generator.num_steps=5000", "1000 training steps"],
    ),
    (
        "resolution-off-the-latent-grid",
        _check("generator.resolution=30"),
        ["generator.resolution=30", "VAE factor 4"],
    ),
    (
        "guidance-decoder-missing",
        _check("generator.guidance_decoder=/nonexistent/taesd"),
        ["/nonexistent/taesd", "no config.json", "AutoencoderTiny"],
    ),
    ("student-cannot-take-24px", _check("distill.student=lenet5"), ["distill.student=lenet5", "24 x 24"]),
    ("unknown-student", _check("distill.student=resnet1000"), ["unknown model 'resnet1000'"]),
    ("unknown-source", _check("synth.source=magic"), ["unknown synthetic-data source 'magic'"]),
    (
        "random-bytes-teacher",
        lambda u, tmp: _check(f"teacher.weights={u.root / 'random.pt'}", "teacher.arch=cnn_small")(u, tmp),
        ["random.pt is not a torch checkpoint"],
    ),
    (
        "state-dict-without-arch",
        lambda u, tmp: _check(f"teacher.weights={u.root / 'random.pt'}")(u, tmp),
        ["set teacher.arch", "not a TorchScript file"],
    ),
    (
        "teacher-without-batchnorm",
        lambda u, tmp: _check(f"teacher.weights={u.root / 'no_bn.pt'}", "guidance.bn_weight=0.1")(u, tmp),
        ["guidance.bn_weight=0.1", "no BatchNorm layer", "Ways out: guidance.bn_weight=0"],
    ),
    (
        "deepinversion-teacher-without-batchnorm",
        lambda u, tmp: _check(f"teacher.weights={u.root / 'no_bn.pt'}", "synth.source=deepinversion")(u, tmp),
        ["deepinversion.bn_weight=1.0", "no BatchNorm layer"],
    ),
    (
        "fast-teacher-without-batchnorm",
        lambda u, tmp: _check(f"teacher.weights={u.root / 'no_bn.pt'}", "synth.source=fast")(u, tmp),
        ["fast.bn_weight=1.0", "no BatchNorm layer"],
    ),
    (
        "teacher-file-missing",
        _check("teacher.weights=/nonexistent/t.pt"),
        ["/nonexistent/t.pt does not exist"],
    ),
    ("no-generator-folder", lambda u, tmp: _check(f"generator.path={tmp}")(u, tmp), ["no model_index.json"]),
    ("eval-folder-missing", _check("eval_folder=/nonexistent/test"), ["/nonexistent/test", "does not exist"]),
    (
        "eval-folder-unknown-class",
        lambda u, tmp: _check(
            f"eval_folder={_eval_copy(u, tmp, lambda f: (f / 'owl').rename(f / 'banana'))}"
        )(u, tmp),
        ["banana", "name no class", "owl"],
    ),
    (
        "eval-folder-extra-folder",
        lambda u, tmp: _check(f"eval_folder={_eval_copy(u, tmp, lambda f: (f / 'gnu').mkdir())}")(u, tmp),
        ["gnu", "name no class"],
    ),
    (
        "foreign-teacher-on-a-world-split",
        _check("eval_folder=", "world=digits"),
        ["not the digits world's", "set eval_folder"],
    ),
    (
        "foreign-synth-folder",
        lambda u, tmp: _check(f"synth.out_dir={_foreign_folder(tmp)}")(u, tmp),
        ["not a synthetic dataset folder"],
    ),
    (
        "foreign-output-folder",
        lambda u, tmp: ["check", "--config", u.config, f"out_dir={_foreign_folder(tmp)}"],
        ["not a diffdfkd run", "notes.txt"],
    ),
    (
        "changed-synth-config",
        lambda u, tmp: ["synthesize", "--config", u.config, f"synth.out_dir={u.datasets['a']}", "seed=5"],
        ["another config", "seed (0 -> 5)"],
    ),
    (
        "distill-partial-dataset",
        _distill(lambda u, tmp: u.datasets["partial"]),
        ["2 of 4 batches are missing", "--allow-partial"],
    ),
    ("distill-damaged-image", _distill(_damaged_copy), ["missing or damaged", "diffdfkd synthesize"]),
    (
        "distill-another-dataset",
        lambda u, tmp: ["distill", "--config", u.config, "--data", u.datasets["b"], f"out_dir={u.trained}"],
        ["trained on another dataset", "--overwrite"],
    ),
    ("unrecognized-flag", _check("--bogus"), ["unrecognized arguments: --bogus"]),
    (
        "adversarial-term-without-guidance",
        _check("guidance.adv_weight=0.5", "guidance.mode=none"),
        ["guidance.adv_weight=0.5 with guidance.mode=none", "set guidance.adv_weight=0"],
    ),
    (
        "adversarial-term-with-another-source",
        _check("guidance.adv_weight=0.5", "synth.source=deepinversion"),
        ["synth.source=deepinversion does not use it"],
    ),
    (
        "adversarial-term-in-shards",
        lambda u, tmp: [
            "synthesize",
            "--config",
            u.config,
            f"out_dir={tmp / 'out'}",
            "--shard",
            "0",
            "--num-shards",
            "2",
            "guidance.adv_weight=0.5",
        ],  # fmt: skip
        ["rounds run in order in ONE process", "--num-shards"],
    ),
    (
        "online-student-unknown",
        _check("guidance.adv_weight=0.5", "online.student=resnet1000"),
        ["unknown model 'resnet1000'"],
    ),
    ("online-kd-steps-0", _check("online.kd_steps=0"), ["online.kd_steps=0 must be > 0"]),
    # --- issue 22 ---
    (
        "planted-adaptation-checkpoint",  # its pickle would run a shell command: it is never unpickled
        lambda u, tmp: _adapt_with_planted_checkpoint(u, tmp),
        ["adapt_checkpoint.pt cannot be read as a diffdfkd checkpoint", "never run", "delete it"],
    ),
    (
        "prompt-longer-than-the-tokenizer-window",
        _check("generator.prompt_template=a b c d e f g {label}"),
        ["'a b c d e f g owl' is 10 tokens long", "more than the 8", "generator.prompt_template"],
    ),
    (
        "truncated-unet-weights",
        lambda u, tmp: _check(f"generator.path={_truncated_generator(u, tmp)}")(u, tmp),
        ["unet/diffusion_pytorch_model.safetensors is not a complete safetensors file"],
    ),
    (
        "teacher-keys-beside-the-shipped-teacher",
        _check(
            "world=digits",
            "eval_folder=",
            "teacher.weights=",
            "teacher.class_names=[]",
            "teacher.arch=wrn_16_2",
        ),
        ["teacher.arch=wrn_16_2, teacher.input_size=24 set with an empty teacher.weights", "shipped teacher"],
    ),
    (
        "evaluate-an-empty-class-folder",
        lambda u, tmp: [
            "evaluate",
            "--config",
            u.config,
            "--folder",
            _eval_copy(u, tmp, lambda f: [p.unlink() for p in (f / "owl").iterdir()]),
        ],  # fmt: skip
        ["class folder(s) ['owl']", "hold no images"],
    ),
    (
        "distill-the-configs-dataset-made-with-another-config",  # no --data: the config's synth output
        lambda u, tmp: [
            "distill",
            "--config",
            u.config,
            f"synth.out_dir={u.datasets['a']}",
            "seed=5",
            f"out_dir={tmp / 'out'}",
        ],  # fmt: skip
        ["distill without --data reads this config's dataset", "seed (0 -> 5)", "--data"],
    ),
    (
        "manifest-row-outside-the-dataset",
        _distill(lambda u, tmp: _edited_dataset(u, tmp, _point_first_row_at("../../../x.png"))),
        ["names the file '../../../x.png'", "not a path inside the dataset"],
    ),
    (
        "manifest-row-absolute-path",
        _distill(lambda u, tmp: _edited_dataset(u, tmp, _point_first_row_at("/etc/passwd"))),
        ["names the file '/etc/passwd'", "not a path inside the dataset"],
    ),
    (
        "manifest-row-image-of-another-size",
        _distill(lambda u, tmp: _edited_dataset(u, tmp, _other_size_image)),
        ["holds images of several sizes", "16 x 16 px", "24 x 24 px"],
    ),
    (
        "truncated-last-manifest-line",
        _distill(_truncated_manifest),
        ["line 16 of", "manifest.jsonl is not a JSON manifest row", "rerun `diffdfkd synthesize`"],
    ),
    (
        "read-only-out-dir",
        lambda u, tmp: ["check", "--config", u.config, f"out_dir={_read_only_folder(tmp) / 'out'}"],
        ["out_dir: cannot write into", "choose a writable folder"],
    ),
    (
        "synthesize-into-an-out-dir-that-is-a-file",
        lambda u, tmp: ["synthesize", "--config", u.config, f"out_dir={_a_file(tmp)}"],
        ["out_dir:", "a_file is a file, not a folder"],
    ),
    (
        "batch-larger-than-the-train-split",
        _check("distill.batch_size=200"),
        [
            "distill.batch_size=200 is larger than the train split (14 of 16 images",
            "distill.holdout_fraction",
        ],
    ),
    (
        "distill-batch-larger-than-the-train-split",
        _distill(lambda u, tmp: u.datasets["a"], "distill.batch_size=15"),
        ["distill.batch_size=15 is larger than the train split (14 of 16 images"],
    ),
    (
        "exported-program-teacher",
        lambda u, tmp: _check(f"teacher.weights={_exported_teacher(tmp)}", "teacher.arch=cnn_small")(u, tmp),
        ["teacher.pt2 was exported for a fixed batch of 2", "Dim('batch')"],  # a .pt2 is loaded (issue 24)
    ),
    (
        "code-pickle-teacher",  # torch 2.13 says "unsupported GLOBAL"
        lambda u, tmp: _check(f"teacher.weights={_planted(tmp / 'evil.pt')}", "teacher.arch=cnn_small")(
            u, tmp
        ),
        ["evil.pt is not a weights-only checkpoint", "pickles code", "never loaded"],
    ),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` -> (size, mtime): what a case must leave unchanged."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, words, code", [(*c[1:], 2)[:3] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_exits_2_with_a_clear_message(user, tmp_path, capsys, argv, words, code):
    command = argv(user, tmp_path)
    before = _tree(user.root), _tree(tmp_path)
    exit_code, _, err = _run(command, capsys)
    assert exit_code == code
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists(), "a failed check claims no folder"
    assert not list(tmp_path.rglob("PLANTED_CODE_RAN")), "no pickled code ran"
    assert (_tree(user.root), _tree(tmp_path)) == before, "nothing outside the output folder changed"


def test_no_checkpoint_of_ours_is_unpickled_with_code():
    sources = Path(__file__).resolve().parents[1] / "src"
    assert not [p for p in sources.rglob("*.py") if "weights_only=False" in p.read_text()]


def test_check_prints_the_plan_and_passes_with_flags_among_overrides(user, tmp_path, capsys):
    code, out, err = _run(["check", "seed=1", "--config", user.config, f"out_dir={tmp_path / 'out'}"], capsys)
    assert code == 0, err
    assert "plan: 16 images in 4 batches of 4, 24 x 24 px" in out
    assert "about 24 UNet calls and 12 UNet backward passes" in out  # 3 steps, all guided, mode full
    assert "14 images, 7 class folders matched by name" in out and "check passed" in out
    assert not (tmp_path / "out").exists(), "check writes nothing"


def test_failed_check_leaves_the_output_folder_unclaimed(user, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _run(["run", "--config", user.config, f"out_dir={out}", "distill.student=lenet5"], capsys)
    assert code == 2 and "24 x 24" in err
    assert not out.exists()
    code, _, err = _run(["check", "--config", user.config, f"out_dir={out}"], capsys)
    assert code == 0, err  # the corrected command is not refused


def test_distilling_another_dataset_into_a_folder_is_refused(user, capsys):
    weights = (user.trained / "student" / "last.safetensors").read_bytes()
    argv = ["distill", "--config", user.config, "--data", user.datasets["b"], f"out_dir={user.trained}"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "trained on another dataset" in err
    assert (user.trained / "student" / "last.safetensors").read_bytes() == weights
    argv[4] = user.datasets["a"]  # the dataset it was trained on: resumes (here: already done)
    code, out, err = _run(argv, capsys)
    assert code == 0 and "student weights" in out, err


def test_partial_dataset_with_allow_partial_says_how_many_images(user, tmp_path, capsys):
    argv = _distill(lambda u, tmp: u.datasets["partial"], "--allow-partial")(user, tmp_path)
    with pytest.warns(UserWarning, match="using the 8 images made so far"):
        code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "distilling on the 8 images made so far" in out


@pytest.mark.parametrize("failure", ["nan-loss", "disk-full"])
def test_distillation_failures_write_no_bad_weights(user, tmp_path, capsys, monkeypatch, failure):
    from diffdfkd.distill import checkpoint, tasks

    if failure == "nan-loss":
        monkeypatch.setattr(tasks, "kd_loss", lambda s, t, temperature: (s * float("nan")).sum())
        words = ["loss is nan", "epoch 1, step 1", "diverged"]
    else:

        def disk_full(path, write):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint, "replace_atomically", disk_full)
        words = ["No space left", "disk full", "rerun the same command", "resumes"]
    code, _, err = _run(_distill(lambda u, tmp: u.datasets["a"])(user, tmp_path), capsys)
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    student = tmp_path / "out" / "student"
    assert not any(student.glob("*.safetensors")) and not (student / "state.pt").exists()


def test_permuted_folder_names_give_the_same_evaluation(user, tmp_path, capsys):
    """Folders are matched to the teacher's class names by name, never by alphabetical position."""
    prefixed = tmp_path / "prefixed"  # 000_owl, 001_cat ...: sorted order is class order
    for k, name in enumerate(CLASSES):
        shutil.copytree(user.eval_folder / name, prefixed / f"{k:03d}_{name}")
    reports = []
    for folder in (prefixed, user.eval_folder):  # the user's folders sort as ant, bee, cat, ...
        report = tmp_path / f"{folder.name}.json"
        code, out, err = _run(
            ["evaluate", "--config", user.config, "--folder", folder, "--json", report], capsys
        )
        assert code == 0, err
        assert f"data: {folder}" in out and "owl" in out
        reports.append(json.loads(report.read_text()))
    assert reports[0]["confusion"] == reports[1]["confusion"]
    assert reports[0]["top1"] == reports[1]["top1"]
    # The folder holds images of four classes the teacher predicts: 8 of 14 right when matched by
    # name; read in alphabetical order (ant, bee, cat ...) the labels would be permuted.
    assert reports[1]["top1"] == pytest.approx(8 / 14)


def test_synthesize_remakes_missing_and_damaged_files_byte_identical(user, tmp_path, capsys, caplog):
    folder = tmp_path / "copy"
    shutil.copytree(user.datasets["a"], folder)
    originals = {p: p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}
    deleted, damaged = list(originals)[:2]
    deleted.unlink()
    damaged.write_bytes(b"not a png")
    argv = ["synthesize", "--config", user.config, "seed=0", "guidance.mode=none", f"synth.out_dir={folder}"]
    code, _, err = _run([*argv, f"out_dir={tmp_path}"], capsys)
    assert code == 0, err
    assert "is damaged" in caplog.text and "making it again" in caplog.text
    assert {p: p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))} == originals


def test_a_full_disk_anywhere_ends_with_a_clear_error(user, tmp_path, capsys, monkeypatch):
    from diffdfkd import pipeline

    def disk_full(model, path, half=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "export_weights", disk_full)
    code, _, err = _run(_distill(lambda u, tmp: u.datasets["a"])(user, tmp_path), capsys)
    assert code == 2 and "Traceback" not in err
    assert "No space left" in err and "disk full" in err and "rerun the same command" in err


def test_check_for_distill_reads_the_dataset_and_the_student_checkpoint(user, capsys):
    argv = ["check", "--stage", "distill", "--config", user.config, "--data", user.datasets["a"]]
    code, out, err = _run([*argv, f"out_dir={user.trained}"], capsys)
    assert code == 0, err
    assert (
        f"dataset: {user.datasets['a']}, 16 images" in out and "output folder" in out and "resumable" in out
    )
    code, out, err = _run([*argv, f"out_dir={user.trained}", "--overwrite"], capsys)
    assert code == 0 and "replaced" not in out  # the same data and config: nothing to replace


# --- issue 22: the cases that need more than one command -------------------------------------------


def _synthesize_argv(user: User, folder: Path, *overrides: str) -> list:
    return [
        "synthesize",
        "--config",
        user.config,
        "guidance.mode=none",
        f"synth.out_dir={folder}",
        *overrides,
    ]


@pytest.mark.slow  # a subprocess holds the lock while three synthesize commands run
def test_a_second_writer_of_another_config_is_refused_while_the_first_writes(user, tmp_path, capsys):
    folder = tmp_path / "busy"
    shutil.copytree(user.datasets["a"], folder)
    before = _tree(folder)
    holder = subprocess.Popen(  # a writer of this dataset, holding its lock as synthesize does
        [sys.executable, "-c", HOLD_LOCK, str(folder / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = _run([*_synthesize_argv(user, folder, "seed=1"), "--overwrite"], capsys)
        assert code == 2 and "Traceback" not in err
        assert "is being written by another diffdfkd process" in err and "wait for it to finish" in err
        assert _tree(folder) == before, "the other writer's folder is untouched"
        code, _, err = _run(_synthesize_argv(user, folder, "seed=0", f"out_dir={tmp_path}"), capsys)
        assert code == 0, err  # a writer of the same config (a shard) joins
    finally:
        holder.kill()
        holder.wait()
    code, _, err = _run(
        [*_synthesize_argv(user, folder, "seed=1", f"out_dir={tmp_path}"), "--overwrite"], capsys
    )
    assert code == 0, err  # once the first writer is gone


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a+")
fcntl.lockf(lock, fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(120)
"""


def test_sigterm_stops_with_the_rerun_message_and_the_rerun_resumes(user, tmp_path, capsys, monkeypatch):
    from diffdfkd.synth.writer import DatasetWriter

    folder = tmp_path / "stopped"
    real = DatasetWriter.write_batch

    def write_then_terminate(self, batch, records):
        real(self, batch, records)
        if batch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(DatasetWriter, "write_batch", write_then_terminate)
    argv = _synthesize_argv(user, folder, "seed=0", f"out_dir={tmp_path}")
    code, _, err = _run(argv, capsys)
    assert code == 143 and "Traceback" not in err
    assert "terminated (SIGTERM); rerun the same command to continue where it stopped" in err
    first = {p.name: float(p.read_text()) for p in (folder / "seconds").glob("*.txt")}
    assert sorted(first) == ["000000.txt", "000001.txt"]
    monkeypatch.undo()
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert (folder / "manifest.jsonl").read_bytes() == (user.datasets["a"] / "manifest.jsonl").read_bytes()
    summary = json.loads((folder / "summary.json").read_text())
    seconds = {p.name: float(p.read_text()) for p in (folder / "seconds").glob("*.txt")}
    assert len(seconds) == 4 and {k: seconds[k] for k in first} == first, "the first process's time is kept"
    assert summary["seconds_all_processes"] == pytest.approx(sum(seconds.values()), abs=0.01)


def test_a_generator_that_fails_at_step_0_claims_no_folder(user, tmp_path, capsys):
    """Corrupt tensor bytes (a file of the right size) pass the header check and make the guidance
    non-finite at step 0: a clean error, and the rerun with the right generator is not refused."""
    generator = tmp_path / "generator"
    right = yaml.safe_load(user.config.read_text())["generator"]["path"]
    shutil.copytree(right, generator)
    weights = generator / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\xff" * 4096  # NaN floats in the last tensors
    weights.write_bytes(bytes(data))
    argv = ["synthesize", "--config", user.config, f"out_dir={tmp_path / 'out'}", "synth.images_per_class=1"]
    code, _, err = _run([*argv, f"generator.path={generator}"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "non-finite guidance loss or gradient at step 0" in err
    code, _, err = _run([*argv, f"generator.path={right}"], capsys)
    assert code == 0, err


def test_16_bit_grey_pngs_are_scaled_not_clipped(tmp_path):
    for k, name in enumerate(CLASSES):
        (tmp_path / name).mkdir()
        grey = np.full((24, 24), 257 * (10 + 30 * k), dtype=np.uint16)  # 8-bit value 10 + 30 k
        Image.fromarray(grey).save(tmp_path / name / "wide.png")  # a 16-bit grey PNG
        Image.fromarray(np.full((24, 24, 3), 10 + 30 * k, dtype=np.uint8)).save(tmp_path / name / "rgb.png")
    images, labels = load_image_folder(tmp_path, CLASSES)
    assert torch.equal(images[0::2], images[1::2]), "a 16-bit grey image reads as its 8-bit RGB twin"
    assert images[0::2, :, 0, 0].mul(255).round().tolist() == [[10 + 30 * int(k)] * 3 for k in labels[0::2]]


def test_distill_overwrite_replaces_the_old_results_and_reports(user, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(user.trained, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(saved | {"out_dir": str(run)}, sort_keys=False))
    for name in ("results.json", "report.md", "report.html"):
        (run / name).write_text("the old student's")
    argv = [
        "distill",
        "--config",
        user.config,
        "--data",
        user.datasets["a"],
        f"out_dir={run}",
        "distill.lr=0.01",
    ]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "changed: distill.lr" in err
    code, _, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert not any((run / name).exists() for name in ("results.json", "report.md", "report.html"))


def test_a_full_disk_while_writing_the_checkpoint_ends_with_a_clear_error(
    user, tmp_path, capsys, monkeypatch
):
    real = Path.write_bytes

    def disk_full_in_out(self, data):
        if str(tmp_path / "out") in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_in_out)
    code, _, err = _run(_distill(lambda u, tmp: u.datasets["a"])(user, tmp_path), capsys)
    assert code == 2 and "Traceback" not in err
    assert "No space left" in err and "rerun the same command" in err and "resumes" in err
    assert not (tmp_path / "out" / "student" / "state.pt").exists()


def test_student_weights_get_the_mode_of_every_other_file(user):
    mode = (user.trained / "config.yaml").stat().st_mode & 0o777
    weights = sorted((user.trained / "student").glob("*.safetensors"))
    assert weights and {w.name: w.stat().st_mode & 0o777 for w in weights} == {w.name: mode for w in weights}
