"""The comparison bench: rows as data, one loop, results files, resume; end to end on tiny parts."""

import dataclasses
import json
import math

import pytest

from diffdfkd.bench import FULL_BUDGET, QUICK_ROWS, ROWS, row_config, run_bench, select_rows
from diffdfkd.config import ConfigError, load_config, replace
from diffdfkd.pipeline import DEMO_CONFIG

TINY_BUDGET = {
    "synth.images_per_class": 2,
    "generator.num_steps": 3,
    "deepinversion.iterations": 3,
    "fast.steps": 2,
    "fast.width": 8,
    "distill.epochs": 1,
    "distill.batch_size": 4,
}


def test_every_row_is_a_valid_config_of_the_shipped_file(tmp_path):
    base = load_config(DEMO_CONFIG)
    assert len({r.name for r in ROWS}) == len(ROWS)
    for row in ROWS:
        config = row_config(base, row, 2, FULL_BUDGET, tmp_path)
        assert config.seed == 2 and config.out_dir == str(tmp_path / "runs" / row.name / "seed2")
        assert config.synth.images_per_class == FULL_BUDGET["synth.images_per_class"]
        recipe = row_config(base, ROWS[0], 2, FULL_BUDGET, tmp_path).distill  # one recipe for every row
        assert dataclasses.replace(config.distill, kd=True) == recipe
    configs = {r.name: row_config(base, r, 0, FULL_BUDGET, tmp_path) for r in ROWS}
    assert configs["diffdfkd"].guidance.mode == "full" and configs["diffdfkd"].cutmix.enabled
    assert configs["unguided_class_prompt"].generator.prompt_template == "a handwritten digit {label}"
    assert configs["unguided_classfree"].guidance.mode == "none"
    assert configs["ce_only"].guidance.bn_weight == 0.0
    assert configs["deepinversion"].synth.source == "deepinversion"
    assert configs["kd_real"].synth.source == configs["scratch_real"].synth.source == "real"
    assert configs["kd_real"].distill.kd and not configs["scratch_real"].distill.kd


def test_row_selection():
    assert [r.name for r in select_rows(None, quick=True)] == [r.name for r in ROWS if r.name in QUICK_ROWS]
    assert len(select_rows(None, quick=False)) == len(ROWS)
    assert [r.name for r in select_rows(["kd_real", "diffdfkd"], quick=False)] == ["diffdfkd", "kd_real"]
    with pytest.raises(ConfigError, match="unknown bench rows nope"):
        select_rows(["nope"], quick=False)


def test_run_bench_end_to_end_and_resume(make_config, tmp_path, eval_folder):
    base = replace(
        make_config(tmp_path / "unused"),
        **{"eval_folder": str(eval_folder), "distill.student": "lenet5", "distill.holdout_fraction": 0.25},
    )
    out = tmp_path / "bench"
    report = run_bench(seeds=1, out=out, base=base, budget=TINY_BUDGET, progress=False)
    assert [r["name"] for r in report["rows"]] == [r.name for r in ROWS]
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
        assert 0.0 <= row["student_top1_mean"] <= 1.0 and row["runs"][0]["images"] == 8
    assert set(saved["goal"]) >= {"margin_over_best_baseline", "gap_to_kd_real"}

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
