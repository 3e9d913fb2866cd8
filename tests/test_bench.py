"""The comparison bench: rows as data, one loop, results files, resume; end to end on tiny parts."""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffdfkd.bench import (
    FULL_BUDGET,
    QUICK_ROWS,
    ROWS,
    aggregate,
    machine,
    markdown,
    row_config,
    run_bench,
    run_record,
    select_rows,
)
from diffdfkd.bench.rows import FAST_ADV_WEIGHT, WORLD_CONFIGS
from diffdfkd.bench.run import finished_runs, run_student
from diffdfkd.config import ConfigError, load_config, replace, to_dict
from diffdfkd.models import create_model

TINY_BUDGET = {
    "synth.images_per_class": 2,
    "generator.num_steps": 3,
    "deepinversion.iterations": 3,
    "fast.steps": 2,
    "fast.width": 8,
    "cmi.iterations": 2,
    "cmi.width": 8,
    "distill.epochs": 1,
    "distill.batch_size": 4,
}


@pytest.mark.parametrize("world", sorted(WORLD_CONFIGS))
def test_every_row_is_its_own_experiment_on_one_budget_and_one_recipe(tmp_path, world):
    """No two rows run the same config (a row whose overrides were lost or repeat another's would), except
    that ``diffdfkd`` (the world's config) is the adversarial-weight lever row of the world's own weight;
    every row keeps the shared budget, and the KD recipe is one for all (the from-scratch row only drops
    KD)."""
    base = load_config(WORLD_CONFIGS[world])
    rows = select_rows(None, quick=False, world=world)
    configs = {row.name: row_config(base, row, 2, FULL_BUDGET, tmp_path) for row in rows}
    experiments: dict[str, list[str]] = {}
    for name, config in configs.items():
        experiments.setdefault(json.dumps({**to_dict(config), "out_dir": ""}, sort_keys=True), []).append(
            name
        )
    same = [names for names in experiments.values() if len(names) > 1]
    assert same == [["diffdfkd", f"diffdfkd_adv{base.guidance.adv_weight:g}"]]
    recipe = configs["diffdfkd"].distill
    for row in rows:
        config = configs[row.name]
        assert all(str(budget) == str(_get(config, key)) for key, budget in FULL_BUDGET.items()), row.name
        assert all(_plain(value) == _plain(_get(config, key)) for key, value in row.overrides.items()), (
            row.name
        )
        assert dataclasses.replace(config.distill, kd=True) == recipe, row.name


def _plain(value):
    return str(list(value) if isinstance(value, tuple) else value)


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def synthesis_fingerprint(run: Path) -> str:
    """sha256 over a run's synthetic images (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted((run / "synth" / "images").rglob("*.png")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_row_selection():
    assert [r.name for r in select_rows(None, quick=True)] == [r.name for r in ROWS if r.name in QUICK_ROWS]
    assert len(select_rows(None, quick=False)) == len(ROWS)
    assert [r.name for r in select_rows(["kd_real", "diffdfkd_no_adv"], quick=False)] == [
        "diffdfkd_no_adv",
        "kd_real",
    ]
    with pytest.raises(ConfigError, match="unknown bench rows nope"):
        select_rows(["nope"], quick=False)
    emoji_only = [r.name for r in ROWS if r.worlds == ("emoji",)]
    assert emoji_only and not set(emoji_only) & {r.name for r in select_rows(None, False, world="digits")}
    assert set(emoji_only) <= {r.name for r in select_rows(None, False, world="emoji")}
    with pytest.raises(
        ConfigError, match=f"bench rows {emoji_only[0]} \\(runs in emoji\\) do not run in the digits"
    ):
        select_rows(emoji_only[:1], quick=False, world="digits")


# Fast: the rows whose images pair up (L_adv inside its warm-up; KD vs CE on the same real images) and two
# others; slow: every row makes its own images.
SOME_ROWS = ("diffdfkd", "diffdfkd_no_adv", "unguided", "deepinversion", "kd_real", "scratch_real")


@pytest.mark.parametrize(
    "names", [SOME_ROWS, pytest.param(None, marks=pytest.mark.slow, id="every-row")], ids=["some-rows", None]
)
def test_run_bench_end_to_end_and_resume(make_config, tmp_path, eval_folder, names):
    base = replace(
        make_config(tmp_path / "unused"),
        **{
            "eval_folder": str(eval_folder),
            "distill.student": "lenet5",
            "distill.holdout_fraction": 0.25,
            "generator.prompt_template": "a handwritten digit {label}",  # as shipped: class prompts
            "guidance.adv_weight": 1.0,  # as shipped: the diffdfkd row runs the world's weight
        },
    )
    out = tmp_path / "bench"
    report = run_bench(seeds=1, out=out, base=base, budget=TINY_BUDGET, progress=False, only=names)
    rows = select_rows(names, quick=False, world="digits")  # run_bench's world: no emoji-only row
    assert [r["name"] for r in report["rows"]] == [r.name for r in rows]
    for name in ("results.json", "results.md", "accuracy.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    for row in saved["rows"]:
        assert (out / "grids" / f"{row['name']}.png").is_file()
        assert f"| {row['name']} |" in md
        for key in ("student_top1_mean", "student_top1_std", "teacher_top1", "teacher_accuracy",
                    "teacher_prob_target", "teacher_confidence", "synthesis_s", "images_per_s",
                    "synthesis_s_per_image", "kd_s"):  # fmt: skip
            assert math.isfinite(row[key]), (row["name"], key)
        assert row["runs"][0]["images"] == 8
        # per row: per-class accuracy (mean over seeds), the look mix, the BN-statistics distance
        assert list(row["student_per_class_mean"]) == ["zero", "one", "two"]
        assert row["student_per_class_mean"] == row["runs"][0]["per_class"]
        assert math.isfinite(row["bn_distance"]) and row["bn_distance"] > 0
        assert sum(row["look_mix_mean"].values()) == pytest.approx(1.0)
    assert "| row | zero | one | two |" in md and "BN-statistics distance" in md and "Look mix" in md
    # Each row's overrides change what it makes: rows whose synthesis settings differ make other
    # images (an ignored override would repeat another row's set); kd_real and scratch_real differ only
    # in the distillation (KD vs CE without the teacher), so they share their images, not their student.
    # The adversarial rows (weights 1, 3 and 10, and 60 online KD steps) are the exception: this budget's
    # two rounds lie inside the online student's warm-up, so L_adv is off and their images are
    # diffdfkd_no_adv's, and fast_adv's are fast's (tests/test_synth.py shows L_adv at work); here each
    # must at least have run with its setting.
    prints = {row.name: synthesis_fingerprint(out / "runs" / row.name / "seed0") for row in rows}
    assert "diffdfkd" in prints
    for name, key, value in (
        ("diffdfkd", "adv_weight", 1.0),
        ("diffdfkd_adv1", "adv_weight", 1.0),
        ("diffdfkd_adv3", "adv_weight", 3.0),
        ("diffdfkd_adv10", "adv_weight", 10.0),
        ("diffdfkd_online_kd60", "online_kd_steps", 60),
    ):
        if name in prints:
            assert prints.pop(name) == prints["diffdfkd_no_adv"], name
            config = load_config(out / "runs" / name / "seed0" / "config.yaml")
            setting = config.online.kd_steps if key == "online_kd_steps" else config.guidance.adv_weight
            assert setting == value and config.guidance.adv_weight > 0, name
    if "fast_adv" in prints:  # the same warm-up: Fast's adversarial term is off here too
        assert prints.pop("fast_adv") == prints["fast"]
        config = load_config(out / "runs" / "fast_adv" / "seed0" / "config.yaml")
        assert config.guidance.adv_weight == FAST_ADV_WEIGHT > 0 and config.synth.source == "fast"
    assert prints["kd_real"] == prints["scratch_real"]
    assert len(set(prints.values())) == len(prints) - 1
    students = [(out / "runs" / n / "seed0" / "student" / "student.safetensors").read_bytes() for n in ("kd_real", "scratch_real")]  # fmt: skip
    assert students[0] != students[1]
    assert set(saved["comparison"]) >= {"margin_over_best_baseline", "gap_to_kd_real"}
    assert "## Comparison" in md and "minus the strongest data-free baseline" in md

    # A run folder made before the look mix and the BN distance were recorded: measured from the folder.
    run = out / "runs" / "deepinversion" / "seed0"
    summary = json.loads((run / "results.json").read_text())
    older = {
        k: v for k, v in summary.items() if k not in ("look_mix_of_synthetic", "bn_distance_of_synthetic")
    }
    recorded, measured = run_record(summary, run), run_record(older, run)
    assert measured["bn_distance"] == pytest.approx(recorded["bn_distance"], rel=1e-9)
    assert measured["look_mix"] == pytest.approx(recorded["look_mix"])

    # A rerun skips the finished runs: nothing is written in their folders, the numbers are the same.
    results = out / "runs" / "diffdfkd" / "seed0" / "results.json"
    stamp = results.stat().st_mtime_ns
    again = run_bench(seeds=1, out=out, base=base, budget=TINY_BUDGET, progress=False, only=["diffdfkd"])
    assert results.stat().st_mtime_ns == stamp
    assert again["rows"][0]["student_top1_mean"] == saved["rows"][0]["student_top1_mean"]


def test_two_seeds_give_a_std_and_other_images(make_config, tmp_path, eval_folder):
    base = replace(make_config(tmp_path / "unused"), eval_folder=str(eval_folder))
    budget = {**TINY_BUDGET, "distill.epochs": 2}
    report = run_bench(
        seeds=2, out=tmp_path / "b", base=base, budget=budget, only=["deepinversion"], progress=False
    )
    (row,) = report["rows"]
    assert row["seeds"] == 2 and math.isfinite(row["student_top1_std"])
    a, b = (
        tmp_path / "b" / "runs" / "deepinversion" / f"seed{s}" / "synth" / "manifest.jsonl" for s in (0, 1)
    )
    assert a.read_text() != b.read_text()


def test_bench_refuses_unknown_worlds_and_seed_counts(tmp_path):
    with pytest.raises(ConfigError, match="worlds digits"):
        run_bench(world="cifar10", out=tmp_path)
    with pytest.raises(ConfigError, match="seeds"):
        run_bench(seeds=0, out=tmp_path)


def test_a_run_does_not_depend_on_the_runs_before_it(make_config, tmp_path, eval_folder):
    base = replace(make_config(tmp_path / "unused"), eval_folder=str(eval_folder))
    kw = {"seeds": 1, "base": base, "budget": TINY_BUDGET, "progress": False}
    alone = run_bench(out=tmp_path / "alone", only=["kd_real", "scratch_real"], **kw)
    after = run_bench(out=tmp_path / "after", only=["deepinversion", "kd_real", "scratch_real"], **kw)
    for name in ("kd_real", "scratch_real"):
        weights = [
            (tmp_path / out / "runs" / name / "seed0" / "student" / "last.safetensors").read_bytes()
            for out in ("alone", "after")
        ]
        assert weights[0] == weights[1], name
    assert [r["student_top1_mean"] for r in alone["rows"]] == [
        r["student_top1_mean"] for r in after["rows"][1:]
    ]


def test_a_row_from_before_the_new_measures_still_renders():
    """Rows kept from an older committed results.json (benchmarks/baselines_digits.py keeps them) lack
    the BN distance, per-class means and look mix: their cell reads n/a, the tables leave them out."""
    run = {"student_top1": 0.5, "teacher_top1": 0.9, "images": 10, "synthesis_s": 5.0, "images_per_s": 2.0,
           "synthesis_s_per_image": 0.5, "kd_s": 1.0, "eval_s": 1.0, "holdout_agreement": 0.8,
           "teacher_accuracy": 1.0, "teacher_prob_target": 0.9, "teacher_confidence": 0.9,
           "per_class": {"zero": 0.5}, "look_mix": {"scan": 1.0}, "bn_distance": 3.0}  # fmt: skip
    new = ("bn_distance", "student_per_class_mean", "look_mix_mean")
    old_row = {k: v for k, v in aggregate(ROWS[0], [run]).items() if k not in new}
    report = {"world": "digits", "seeds": 1, "quick": False, "budget": {}, "machine": machine(1),
              "wall_seconds_this_call": 0.0, "goal": {}, "rows": [old_row]}  # fmt: skip
    md = markdown(report)
    assert "| diffdfkd | ours | 50.0 ± 0.0 | 100.0 | 0.900 | 0.900 | n/a | 80.0 |" in md
    assert "Look mix" not in md and "| row | zero |" not in md
    assert "| 3.000 |" in markdown({**report, "rows": [aggregate(ROWS[0], [run])]})


def test_a_kept_row_without_local_runs_keeps_its_committed_grid(tmp_path):
    """Run folders are not committed: ``write_grids`` leaves a kept row's grid as it was."""
    from diffdfkd.bench import write_grids

    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "fast.png").write_bytes(b"committed")
    write_grids({"rows": [{"name": "fast"}]}, tmp_path)
    assert (tmp_path / "grids" / "fast.png").read_bytes() == b"committed"


def test_results_written_before_the_renames_read_under_todays_names(tmp_path):
    """A results.json without a ``row_names`` version: its ``diffdfkd`` was the row without the
    adversarial term, its ``diffdfkd_adv`` the shipped config; a file of today's names is left alone."""
    from diffdfkd.bench import ROW_NAMES_VERSION, read_results

    old = {"goal": {"ours": "diffdfkd_adv", "best_baseline": "unguided_class_prompt"},
           "rows": [{"name": n} for n in ("diffdfkd", "diffdfkd_adv", "unguided_class_prompt", "fast")]}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(old))
    read = read_results(tmp_path / "old.json")
    assert [r["name"] for r in read["rows"]] == ["diffdfkd_no_adv", "diffdfkd", "unguided", "fast"]
    assert read["goal"] == {"ours": "diffdfkd", "best_baseline": "unguided"}
    new = {"row_names": ROW_NAMES_VERSION, "rows": [{"name": "diffdfkd"}, {"name": "diffdfkd_no_adv"}]}
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert read_results(tmp_path / "new.json") == new


def test_a_run_folder_of_another_row_of_the_same_name_is_not_reported():
    """Before the renames ``runs/diffdfkd`` held runs without the adversarial term: their saved config
    lacks today's ``diffdfkd`` overrides."""
    from diffdfkd.bench import overrides_hold

    (ours,) = select_rows(["diffdfkd"], quick=False)
    assert overrides_hold(ours, {"guidance": {"adv_weight": 1.0, "bn_weight": 1.0}})
    assert overrides_hold(ours, {"guidance": {"adv_weight": 3.0}})  # the world's weight, whatever it is
    assert not overrides_hold(ours, {"guidance": {"adv_weight": 0.0}})
    (no_adv,) = select_rows(["diffdfkd_no_adv"], quick=False)
    assert overrides_hold(no_adv, {"guidance": {"adv_weight": 0.0}})
    assert not overrides_hold(no_adv, {"guidance": {"adv_weight": 1.0}})
    (paper,) = select_rows(["diffdfkd_paper"], quick=False)
    assert paper.overrides["guidance.step_norm"] == "none" and paper.overrides["guidance.step_size"] == 1.0


def test_finished_runs_lists_the_run_folders_with_a_student_and_run_student_loads_it(tmp_path):
    config = load_config(WORLD_CONFIGS["emoji"])
    model = create_model(config.distill.student, num_classes=12).eval()
    for name, done in (("fast/seed0", True), ("fast/seed1", False), ("cmi/seed0", True)):
        run = tmp_path / "runs" / name
        (run / "student").mkdir(parents=True)
        (run / "config.yaml").write_text(Path(WORLD_CONFIGS["emoji"]).read_text())
        save_file(model.state_dict(), run / "student" / "student.safetensors")
        if done:  # an interrupted run has its student but no results.json yet
            (run / "results.json").write_text("{}")
    runs = finished_runs(tmp_path)
    assert [r.relative_to(tmp_path / "runs").as_posix() for r in runs] == ["cmi/seed0", "fast/seed0"]
    student = run_student(runs[0], num_classes=12)
    images = torch.randn(4, 3, 32, 32)
    assert not student.training
    assert torch.equal(student(images), model(images))
