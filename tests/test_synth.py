"""The synthetic dataset: layout, determinism across batch sizes / shards / a SIGKILL, the folder format."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffdfkd.baselines.fast import FastSource
from diffdfkd.check import check
from diffdfkd.config import ConfigError, ExperimentConfig, SynthConfig, replace, to_dict
from diffdfkd.guidance.guide import GuidanceError, TeacherGuide
from diffdfkd.models.teacher import build_teacher
from diffdfkd.runtime import sample_seed
from diffdfkd.synth import writer as writer_module
from diffdfkd.synth.dataset import load_synthetic
from diffdfkd.synth.diffusion_source import DiffusionSource, class_prompts, prompt_rows
from diffdfkd.synth.online_student import OnlineStudent
from diffdfkd.synth.run import SynthPlan, dataset_signature, resolve_shard, synthesize
from diffdfkd.synth.writer import (
    DatasetWriter,
    IncompleteDatasetError,
    Record,
    SynthWriteError,
    merge_manifest,
    sanitise_class_name,
)
from diffdfkd.synthetic import layout_rank
from diffdfkd.worlds import teacher_spec

# 3 classes x 4 images = 12 = 3 batches of 4; CutMix at steps 1, 2 of 3, intermediates kept.
REFERENCE = {"synth.images_per_class": 4, "cutmix.keep_intermediates": True}
COMPARED = ("images", "parts", "manifest.jsonl", "classes.json", "signature.json")


def dataset_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every dataset file (not config.yaml/run_info/summary, which name the folder)."""
    files = {}
    for name in COMPARED:
        path = root / name
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(file.relative_to(root))] = file.read_bytes()
    return files


@pytest.fixture(scope="module")
def reference(make_config, tmp_path_factory):
    """An uninterrupted, unsharded run: (config, folder)."""
    config = make_config(tmp_path_factory.mktemp("reference"), **REFERENCE)
    return config, synthesize(config, progress=False)


# ----------------------------------------------------------------------------------------------------
# Layout and configuration.


def test_plan_layout_totals_and_shards() -> None:
    plan = SynthPlan(num_classes=3, images_per_class=3, batch_size=4, group_size=4, per_class=2)
    assert plan.total == 12 and plan.num_batches == 3  # 9 rounded up to whole batches
    indices = torch.arange(12)
    assert plan.targets(indices).argmax(dim=1).tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    shards = [list(plan.shard_batches(s, 2)) for s in range(2)]
    assert shards == [[0], [1, 2]]
    assert [b for s in range(3) for b in plan.shard_batches(s, 3)] == [0, 1, 2]


def test_layout_rank_numbers_each_class_s_samples_in_index_order() -> None:
    indices = torch.arange(36)  # 3 classes, 2 per class in a group: 6 groups of 6
    classes = (indices // 2) % 3
    ranks = layout_rank(indices, 2, 3)
    for c in range(3):
        assert ranks[classes == c].tolist() == list(range(12))


def test_prompt_styles_take_turns_within_each_class(make_config, tmp_path) -> None:
    config = make_config(
        tmp_path,
        **{
            "generator.prompt_template": "a {style} digit {label}",
            "generator.prompt_styles": ["bold", "thin", "tall"],
        },
    )
    prompts = class_prompts(config.generator, ["zero", "one"])
    assert prompts == [f"a {s} digit {n}" for n in ("zero", "one") for s in ("bold", "thin", "tall")]
    indices = torch.arange(24)  # 2 classes, 2 per class in a group
    classes = (indices // 2) % 2
    chosen = [prompts[r] for r in prompt_rows(config.generator, indices, classes, 2, 2)]
    assert chosen[:4] == ["a bold digit zero", "a thin digit zero", "a bold digit one", "a thin digit one"]
    for c, name in enumerate(("zero", "one")):
        mine = [p for p, k in zip(chosen, classes, strict=True) if k == c]
        assert mine == [f"a {s} digit {name}" for s in ("bold", "thin", "tall")] * 4
    plain = make_config(tmp_path, **{"generator.prompt_template": "a digit {label}"}).generator
    assert torch.equal(prompt_rows(plain, indices, classes, 2, 2), classes)


def test_styled_images_do_not_depend_on_the_batch_size_and_take_their_style(
    make_config, tmp_path, tiny_components
) -> None:
    styled = {
        "generator.prompt_template": "a {style} digit {label}",
        "generator.prompt_styles": ["bold", "thin"],
    }
    teacher = build_teacher(teacher_spec(make_config(tmp_path)))
    source = DiffusionSource(make_config(tmp_path, **styled), teacher, tiny_components)
    plan = SynthPlan.from_config(source.config, 3)
    indices = torch.arange(8)
    whole = source.generate(indices, plan.targets(indices)).images
    halves = [source.generate(indices[i : i + 4], plan.targets(indices[i : i + 4])).images for i in (0, 4)]
    assert torch.allclose(whole, torch.cat(halves), atol=1e-4)
    # unguided, without CutMix, each image depends on its own prompt only: rank 0 of each class is bold
    alone = {"guidance.mode": "none", "cutmix.enabled": False, "guidance.adv_weight": 0.0}
    styled_alone = DiffusionSource(make_config(tmp_path, **styled, **alone), teacher, tiny_components)
    bold = {**alone, "generator.prompt_template": "a bold digit {label}"}
    bold_alone = DiffusionSource(make_config(tmp_path, **bold), teacher, tiny_components)
    mixed, plain = (s.generate(indices, plan.targets(indices)).images for s in (styled_alone, bold_alone))
    assert torch.allclose(mixed[0::2], plain[0::2], atol=1e-5)
    assert not torch.allclose(mixed[1::2], plain[1::2], atol=1e-3)


def test_layout_is_validated(make_config, tmp_path) -> None:
    with pytest.raises(ConfigError, match="multiple of synth.group_size"):
        SynthConfig(batch_size=6, group_size=4)
    with pytest.raises(ConfigError, match="multiple of synth.samples_per_class_in_group"):
        SynthConfig(group_size=5, samples_per_class_in_group=2)
    config = make_config(tmp_path, **{"synth.samples_per_class_in_group": 1})
    with pytest.raises(ConfigError, match="samples_per_class_in_group >= 2"):
        SynthPlan.from_config(config, 3)
    SynthPlan.from_config(replace(config, **{"cutmix.cross_class": True}), 3)  # fine across classes


def test_shard_from_torchrun_environment(monkeypatch) -> None:
    assert resolve_shard(None, None) == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_shard(None, None) == (1, 4)
    assert resolve_shard(0, 2) == (0, 2)
    with pytest.raises(ConfigError):
        resolve_shard(2, 2)


# ----------------------------------------------------------------------------------------------------
# Determinism.


def test_images_do_not_depend_on_the_batch_size(make_config, tmp_path, tiny_components) -> None:
    config = make_config(tmp_path, **{"cutmix.keep_intermediates": True, "guidance.step_size": 5.0})
    source = DiffusionSource(config, build_teacher(teacher_spec(config)), components=tiny_components)
    plan = SynthPlan.from_config(config, 3)
    indices = torch.arange(8)
    whole = source.generate(indices, plan.targets(indices))
    halves = [source.generate(indices[i : i + 4], plan.targets(indices[i : i + 4])) for i in (0, 4)]
    assert torch.allclose(whole.images, torch.cat([h.images for h in halves]), atol=1e-4)
    assert torch.equal(whole.targets, torch.cat([h.targets for h in halves]))
    # Intermediates are ordered by step, then sample: compare sample-wise.
    for half, offset in zip(halves, (0, 4), strict=True):
        mask = (whole.extra.indices >= offset) & (whole.extra.indices < offset + 4)
        assert torch.allclose(whole.extra.images[mask], half.extra.images, atol=1e-4)


def test_shards_write_the_same_bytes(make_config, tmp_path, reference) -> None:
    config = make_config(tmp_path / "sharded", **REFERENCE)
    synthesize(config, shard=0, num_shards=2, progress=False)
    assert not (tmp_path / "sharded" / "manifest.jsonl").exists(), "merged only once every batch is done"
    with pytest.raises(IncompleteDatasetError, match="2 of 3 batches are missing.*--allow-partial"):
        load_synthetic(tmp_path / "sharded")
    with pytest.warns(UserWarning, match="using the 12 images made so far"):
        partial = load_synthetic(tmp_path / "sharded", allow_partial=True)
    assert len(partial) == 4 * 3  # batch 0: 4 finals + 8 intermediates
    with pytest.raises(IncompleteDatasetError, match="2 of 3 batches"):
        merge_manifest(tmp_path / "sharded")
    synthesize(config, shard=1, num_shards=2, progress=False)
    assert dataset_files(tmp_path / "sharded") == dataset_files(reference[1])


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from diffdfkd.config import load_config
    from diffdfkd.synth import writer
    from diffdfkd.synth.run import synthesize

    real, written = writer.png_bytes, []

    def png_then_die(image):
        written.append(1)
        if len(written) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # a real, uncatchable kill in the middle of a batch
        return real(image)

    writer.png_bytes = png_then_die
    synthesize(load_config(sys.argv[1]), progress=False)
    """
)


@pytest.mark.slow  # a SIGKILLed subprocess
def test_resume_after_sigkill_is_byte_identical(make_config, tmp_path, reference) -> None:
    out = tmp_path / "killed"
    config = make_config(out, **REFERENCE)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # HF_HUB_OFFLINE: conftest.py
    # 12 PNGs per batch (4 finals, 8 intermediates): die writing the 5th PNG of batch 1.
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(config_file), "17"], env=env, capture_output=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert (out / "parts" / "000000.jsonl").is_file() and not (out / "parts" / "000001.jsonl").exists()
    assert len(list((out / "images").rglob("*.png"))) == 12 + 4, "batch 1 was cut off midway"
    synthesize(config, progress=False)  # the same command again
    assert dataset_files(out) == dataset_files(reference[1])
    assert not (out / "tmp").exists(), "no temp files left"


# ----------------------------------------------------------------------------------------------------
# The folder format.


def test_dataset_reads_back_with_manifest_and_teacher_logits_on_saved_images(reference) -> None:
    config, root = reference
    data = load_synthetic(root)
    assert len(data) == 12 * 3 and data.images.shape[1:] == (3, 32, 32)
    assert data.class_names == ("zero", "one", "two")
    finals = load_synthetic(root, kinds=("final",))
    assert finals.indices.tolist() == list(range(12))
    assert finals.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    row = rows[0]
    assert row["file"] == "images/000_zero/0000000.png" and row["kind"] == "final"
    assert row["seed"] == sample_seed(config.seed, 0) and "target" not in row
    assert {r["kind"] for r in rows} == {"final", "intermediate"}
    teacher = build_teacher(teacher_spec(config))
    with torch.no_grad():
        logits = teacher(finals.images)
    assert torch.allclose(logits, finals.teacher_logits, atol=1e-4), "logits of the image as saved"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["images_per_class"] == {"zero": 4, "one": 4, "two": 4}
    assert 0 <= summary["mean_teacher_prob_target"] <= 1
    # ImageFolder-compatible: one folder per class, sorted in class order.
    assert sorted(p.name for p in (root / "images").iterdir()) == ["000_zero", "001_one", "002_two"]


def test_another_config_is_refused_naming_the_keys(reference) -> None:
    config, root = reference
    changed = replace(config, **{"guidance.step_size": 2.0, "generator.num_steps": 4})
    with pytest.raises(ConfigError, match=r"generator\.num_steps.*guidance\.step_size"):
        synthesize(changed, progress=False)


def test_overwrite_replaces_a_dataset_made_with_another_config(tmp_path) -> None:
    writer = DatasetWriter(tmp_path, ["a", "b"])
    writer.prepare(ExperimentConfig(), {"x": 1, "resolved.num_batches": 1})
    writer.write_batch(0, [Record(writer.file_for(0, 0), np.zeros((4, 4, 3), np.uint8), {"index": 0})])
    with pytest.raises(ConfigError, match=r"x \(1 -> 2\)"):
        writer.prepare(ExperimentConfig(), {"x": 2, "resolved.num_batches": 1})
    writer.prepare(ExperimentConfig(), {"x": 2, "resolved.num_batches": 1}, overwrite=True)
    assert not writer.is_done(0) and not list((tmp_path / "images").rglob("*.png"))


def test_class_names_are_sanitised(make_config, tmp_path) -> None:
    assert sanitise_class_name("../../etc/passwd") == "etc_passwd"
    assert sanitise_class_name("..") == "class"
    assert sanitise_class_name("a\\b:c") == "a_b_c"
    assert sanitise_class_name("tench, Tinca tinca") == "tench_Tinca_tinca"
    names = ["a/b", "..", "x y"]
    config = make_config(tmp_path / "out", **{"teacher.class_names": names, "guidance.mode": "none"})
    root = synthesize(config, progress=False)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["000_a_b", "001_class", "002_x_y"]
    assert all(p.resolve().is_relative_to(root.resolve()) for p in root.rglob("*"))
    assert load_synthetic(root).class_names == tuple(names)


def test_cross_class_rows_carry_soft_targets(make_config, tmp_path) -> None:
    config = make_config(tmp_path, **{"cutmix.cross_class": True, "guidance.mode": "none"})
    data = load_synthetic(synthesize(config, progress=False))
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert any("target" in r for r in rows), "some samples were mixed across classes"
    assert torch.allclose(data.targets.sum(dim=1), torch.ones(len(data)))
    assert torch.equal(data.labels, data.targets.argmax(dim=1))
    assert all(Image.open(tmp_path / r["file"]).size == (32, 32) for r in rows)


def test_non_finite_guidance_saves_nothing(make_config, tmp_path, monkeypatch) -> None:
    real = TeacherGuide.__call__

    def nan_grad(self, x0_hat, z, targets):
        out = real(self, x0_hat, z, targets)
        out.grad.fill_(float("nan"))
        return out

    monkeypatch.setattr(TeacherGuide, "__call__", nan_grad)
    with pytest.raises(GuidanceError, match="step 0 of 3"):
        synthesize(make_config(tmp_path), progress=False)
    assert not list((tmp_path / "parts").iterdir()) and not list((tmp_path / "images").rglob("*.png"))


def test_write_error_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    writer = DatasetWriter(tmp_path, ["a"])
    writer.prepare(ExperimentConfig(), {"resolved.num_batches": 1})
    calls = []

    def disk_full(image):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return b"png"

    monkeypatch.setattr(writer_module, "png_bytes", disk_full)
    records = [Record(writer.file_for(i, 0), np.zeros((4, 4, 3), np.uint8), {"index": i}) for i in range(3)]
    with pytest.raises(SynthWriteError, match="No space left"):
        writer.write_batch(0, records)
    assert not writer.is_done(0)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".json", ".yaml")]
    leftovers = [p for p in leftovers if p.name != ".lock"]  # the writer's lock, not a partial file
    assert [p.name for p in leftovers] == ["0000000.png"], "only whole files from before the error"
    with pytest.raises(IncompleteDatasetError, match="1 of 1 batches are missing"):
        load_synthetic(tmp_path)


def test_image_folder_reader_takes_the_dataset_or_its_images(reference) -> None:
    from diffdfkd.synth.dataset import load_image_folder

    _, root = reference
    images, labels = load_image_folder(root, ("zero", "one", "two"))
    assert images.shape == (36, 3, 32, 32)
    again, labels_again = load_image_folder(root / "images", ("zero", "one", "two"))
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    data = load_synthetic(root)
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())


# ----------------------------------------------------------------------------------------------------
# The online student and the adversarial term (guidance.adv_weight > 0).

# 3 batches (rounds) of 8; L_adv from round 1 on; a student that learns the tiny teacher's decisions
# within a round (T 1, lr 0.5), so that it agrees with it and L_adv has something to push.
ADV = {
    "synth.images_per_class": 8,
    "synth.batch_size": 8,
    "guidance.adv_weight": 10.0,
    "online.warmup_rounds": 1,
    "online.kd_steps": 20,
    "online.lr": 0.5,
    "online.temperature": 1.0,
}


@pytest.fixture(scope="module")
def adv_reference(make_config, tmp_path_factory):
    """An uninterrupted run with L_adv: (config, folder)."""
    config = make_config(tmp_path_factory.mktemp("adv_reference"), **ADV)
    return config, synthesize(config, progress=False)


def batch_images(root: Path, batch: int) -> dict[int, bytes]:
    """Sample index -> PNG bytes of the images of a finished batch."""
    rows = [json.loads(line) for line in (root / "parts" / f"{batch:06d}.jsonl").read_text().splitlines()]
    return {r["index"]: (root / r["file"]).read_bytes() for r in rows}


def test_online_student_learns_every_round_and_replays_exactly(make_config, tmp_path) -> None:
    config = make_config(tmp_path, **ADV)
    g = torch.Generator().manual_seed(0)
    rounds = [
        (
            torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randn(8, 3, generator=g),
        )
        for _ in range(2)
    ]
    student = OnlineStudent(config, 3, 32, torch.device("cpu"))
    states = [{k: v.clone() for k, v in student.model.state_dict().items()}]
    for pixels, logits in rounds:
        stats = student.learn(pixels, logits)
        assert 0 <= stats["agree"] <= 1 and stats["kd"] >= 0
        states.append({k: v.clone() for k, v in student.model.state_dict().items()})
    for before, after in zip(states, states[1:], strict=False):
        assert any(not torch.equal(before[k], after[k]) for k in before), "every round moves the weights"
    replayed = OnlineStudent(config, 3, 32, torch.device("cpu"))
    for pixels, logits in rounds:
        replayed.learn(pixels, logits)
    assert all(torch.equal(v, states[-1][k]) for k, v in replayed.model.state_dict().items())
    with pytest.raises(ValueError, match="saved uint8 images"):
        student.learn(rounds[0][0].float() / 255, rounds[0][1])


def test_adversarial_term_is_off_before_the_warmup_and_on_after(
    make_config, tmp_path, tiny_components
) -> None:
    config = make_config(tmp_path, **ADV)
    teacher = build_teacher(teacher_spec(config))

    class Student:  # the teacher's decisions, surer: KL > 0 everywhere; active as the rounds say
        active = False

        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            return 3 * teacher(images)

    student = Student()
    source = DiffusionSource(config, teacher, components=tiny_components, student=student)
    plan = SynthPlan.from_config(config, 3)
    warmup = source.generate(plan.indices(0), plan.targets(plan.indices(0)))
    student.active = True
    adversarial = source.generate(plan.indices(1), plan.targets(plan.indices(1)))
    assert warmup.logs and all("adv" not in log for log in warmup.logs), "round 0: no L_adv"
    assert adversarial.logs and all(log["adv"] < 0 for log in adversarial.logs)


def test_adversarial_term_changes_the_images_from_the_first_round_after_the_warmup(
    make_config, tmp_path, adv_reference
) -> None:
    config, root = adv_reference
    plain = synthesize(
        replace(config, **{"guidance.adv_weight": 0.0, "synth.out_dir": str(tmp_path)}), progress=False
    )
    assert batch_images(root, 0) == batch_images(plain, 0), "the same seeds: no L_adv in the warm-up round"
    for b in (1, 2):
        differ = [i for i, data in batch_images(root, b).items() if batch_images(plain, b)[i] != data]
        assert differ, f"L_adv changed no image of round {b}"


@pytest.mark.slow  # a SIGKILLed subprocess
def test_resume_with_the_online_student_is_byte_identical(make_config, tmp_path, adv_reference) -> None:
    out = tmp_path / "killed"
    config = make_config(out, **ADV)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # HF_HUB_OFFLINE: conftest.py
    # 8 PNGs per batch: die writing the 4th PNG of batch 2, made with L_adv against the student of
    # rounds 0 and 1, which the resumed run must rebuild from the saved images.
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(config_file), "20"], env=env, capture_output=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert (out / "parts" / "000001.jsonl").is_file() and not (out / "parts" / "000002.jsonl").exists()
    synthesize(config, progress=False)
    assert dataset_files(out) == dataset_files(adv_reference[1])


def copy_losing_batch(root: Path, copy: Path, batch: int) -> Path:
    """A copy of the dataset ``root`` without batch ``batch`` (its part, images and seconds), as a run
    killed before writing it leaves it."""
    shutil.copytree(root, copy)
    part = copy / "parts" / f"{batch:06d}.jsonl"
    for line in part.read_text().splitlines():
        (copy / json.loads(line)["file"]).unlink()
    part.unlink()
    (copy / "seconds" / f"{batch:06d}.txt").unlink()
    return copy


FAST_ADV = {**ADV, "synth.source": "fast", "fast.steps": 3, "fast.width": 8, "fast.latent_dim": 16,
            "fast.warmup_rounds": 1}  # fmt: skip


def test_fast_takes_the_adversarial_term_and_a_resume_replays_its_rounds_beside_the_student(
    make_config, tmp_path
) -> None:
    config = make_config(tmp_path / "full", **FAST_ADV)
    full = synthesize(config, progress=False)
    plain = synthesize(
        replace(config, **{"guidance.adv_weight": 0.0, "synth.out_dir": str(tmp_path / "plain")}),
        progress=False,
    )
    assert batch_images(full, 0) == batch_images(plain, 0), "the warm-up round: no L_adv"
    for b in (1, 2):
        assert batch_images(full, b) != batch_images(plain, b), f"L_adv changed no image of round {b}"
    # Batch 2 lost: the rerun rebuilds the student and replays Fast's rounds 0-1 beside it, in step.
    resumed = copy_losing_batch(full, tmp_path / "resumed", 2)
    synthesize(replace(config, **{"synth.out_dir": str(resumed)}), progress=False)
    assert dataset_files(resumed) == dataset_files(full)


def test_a_resume_keeps_the_time_of_redoing_written_rounds_out_of_the_dataset_s_cost(
    make_config, tmp_path, monkeypatch
) -> None:
    # A clock that moves one second per Fast round and never otherwise: batch 0 costs the warm-up
    # round and its own, batches 1 and 2 one round each.
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    make_round = FastSource.round

    def one_second_round(self, *args):
        clock[0] += 1.0
        return make_round(self, *args)

    monkeypatch.setattr(FastSource, "round", one_second_round)
    config = make_config(tmp_path / "full", **{**FAST_ADV, "guidance.adv_weight": 0.0})
    full = synthesize(config, progress=False)
    # Batch 2 lost: the rerun redoes Fast's warm-up and rounds 0-1 (3 s) before making batch 2 (1 s).
    resumed = copy_losing_batch(full, tmp_path / "resumed", 2)
    synthesize(replace(config, **{"synth.out_dir": str(resumed)}), progress=False)
    assert dataset_files(resumed) == dataset_files(full)
    seconds = {f.name: float(f.read_text()) for f in (resumed / "seconds").iterdir()}
    assert seconds == {"000000.txt": 2.0, "000001.txt": 1.0, "000002.txt": 1.0, "000002.redo.txt": 3.0}
    summaries = [json.loads((root / "summary.json").read_text()) for root in (full, resumed)]
    assert [s["seconds_all_processes"] for s in summaries] == [4.0, 4.0], "the dataset costs the same"
    assert [s["seconds_redone"] for s in summaries] == [0.0, 3.0]


CMI_ADV = {**ADV, "synth.source": "cmi", "cmi.iterations": 3, "cmi.width": 8, "cmi.latent_dim": 16,
           "cmi.head_dim": 8, "cmi.negatives": 6}  # fmt: skip


@pytest.mark.slow  # a SIGKILLed subprocess
def test_cmi_with_the_online_student_resumes_byte_identical_after_sigkill(make_config, tmp_path) -> None:
    full = synthesize(make_config(tmp_path / "full", **CMI_ADV), progress=False)
    plain = synthesize(
        make_config(tmp_path / "plain", **{**CMI_ADV, "guidance.adv_weight": 0.0}), progress=False
    )
    assert batch_images(full, 0) == batch_images(plain, 0), "the warm-up round: no L_adv"
    assert batch_images(full, 2) != batch_images(plain, 2), "L_adv changed round 2"
    out = tmp_path / "killed"
    config = make_config(out, **CMI_ADV)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(config)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # HF_HUB_OFFLINE: conftest.py
    # die writing the 4th PNG of batch 2: the rerun replays CMI's rounds 0-1 (its head and memory
    # bank) beside the student it rebuilds from the saved images
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(config_file), "20"], env=env, capture_output=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert (out / "parts" / "000001.jsonl").is_file() and not (out / "parts" / "000002.jsonl").exists()
    synthesize(config, progress=False)
    assert dataset_files(out) == dataset_files(full)


def test_adversarial_term_refuses_what_it_cannot_do(make_config, tmp_path, tiny_components) -> None:
    config = make_config(tmp_path / "out", **ADV)
    with pytest.raises(ConfigError, match="ONE process"):
        synthesize(config, shard=0, num_shards=2, progress=False)
    for change, message in (
        ({"guidance.mode": "none"}, "guidance.mode=none: there is no teacher guidance"),
        ({"synth.source": "deepinversion"}, "synth.source=deepinversion does not use it"),  # Fast takes it
    ):
        with pytest.raises(ConfigError, match=message):
            check(replace(config, **change), "synthesize")
        with pytest.raises(ConfigError, match=message):
            synthesize(replace(config, **change), progress=False)
    with pytest.raises(ConfigError, match="needs the online student"):
        DiffusionSource(config, build_teacher(teacher_spec(config)), components=tiny_components)
    assert not (tmp_path / "out").exists(), "refused before anything was written"
    with pytest.raises(ConfigError, match="online.kd_steps=0 must be > 0"):
        replace(config, **{"online.kd_steps": 0})
    assert any("online, for L_adv from round 1 of 3" in line for line in check(config, "synthesize").lines)


def test_online_keys_sign_the_dataset_only_with_the_adversarial_term(make_config, tmp_path) -> None:
    config = make_config(tmp_path)
    plan = SynthPlan.from_config(config, 3)

    def sign(c: ExperimentConfig) -> dict:
        return dataset_signature(c, plan, ("zero", "one", "two"), 32)

    assert not any(k.startswith("online.") for k in sign(config)), "datasets made before online.* resume"
    assert sign(replace(config, **{"online.kd_steps": 7})) == sign(config)
    adv = replace(config, **{"guidance.adv_weight": 1.0})
    assert sign(replace(adv, **{"online.kd_steps": 7})) != sign(adv)
    assert sign(adv)["resolved.online_student"] == "lenet5"
    assert sign(replace(adv, **{"distill.student": "cnn_small"}))["resolved.online_student"] == "cnn_small"


def test_recurrence_signs_the_dataset_only_above_one(make_config, tmp_path) -> None:
    config = make_config(tmp_path)
    plan = SynthPlan.from_config(config, 3)

    def sign(c: ExperimentConfig) -> dict:
        return dataset_signature(c, plan, ("zero", "one", "two"), 32)

    assert "guidance.recurrence" not in sign(config), "datasets made before the key existed resume"
    assert sign(replace(config, **{"guidance.recurrence": 2}))["guidance.recurrence"] == 2
