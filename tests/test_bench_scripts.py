"""The benchmark scripts' own logic: ``goals.py``'s budget curve read from the comparison folders, and
``tune_digits.py``'s default sweep being configs the library accepts, ``pooled_agreement.py``'s scoring;
and every script still importing what it names from the library."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from diffdfkd.bench import WORLD_CONFIGS
from diffdfkd.config import load_config, replace
from diffdfkd.synth.online_student import check_online

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """``benchmarks/<name>.py`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.stem)
def test_every_benchmark_script_imports(path, monkeypatch):
    """A script naming what the library no longer exports fails here, not hours into a bench."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # scripts import their neighbours (tune_digits)
    spec = importlib.util.spec_from_file_location(f"bench_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)


def _row(name: str, mean: float, seeds: int = 1, kind: str = "baseline") -> dict:
    return {"name": name, "kind": kind, "student_top1_mean": mean, "student_top1_std": 0.01, "seeds": seeds}


def _write(root: Path, folder: str, rows: list[dict]) -> None:
    (root / "baselines" / folder).mkdir(parents=True)
    (root / "baselines" / folder / "results.json").write_text(json.dumps({"row_names": 2, "rows": rows}))


def test_budget_curve_collects_each_row_over_budgets_and_borrows_generator_free_rows(tmp_path):
    goals = _script("goals")
    _write(tmp_path, "digits-100", [_row("diffdfkd", 0.94, 3, "ours"), _row("kd_real", 0.99, 3)])
    _write(tmp_path, "digits-200", [_row("diffdfkd", 0.98, 1, "ours"), _row("fast", 0.97)])
    # generator-free rows of the other world stand for both; generator rows do not
    _write(tmp_path, "digits-mnist-100", [_row("fast", 0.96, 3), _row("diffdfkd", 0.5, 3, "ours")])
    curve = goals.budget_curve(tmp_path)
    assert list(curve) == ["diffdfkd", "fast", "kd_real"]  # CURVE_ROWS order
    assert [(p["images"], p["mean"], p["seeds"]) for p in curve["diffdfkd"]] == [
        (1000, 0.94, 3),
        (2000, 0.98, 1),
    ]
    assert [(p["images"], p["mean"]) for p in curve["fast"]] == [(1000, 0.96), (2000, 0.97)]
    table = "\n".join(goals.curve_markdown(curve))
    assert "| diffdfkd | 94.0 +- 1.0 (3 seeds) | 98.0 (1 seed) |" in table
    assert "| kd_real | 99.0 +- 1.0 (3 seeds) | - |" in table
    other = {
        "kd_real": curve["kd_real"],
        "fast": curve["fast"],
    }  # fewer rows: the default colours would shift
    fig = goals.plot_curves({"digits": curve, "emoji": other}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    digits, emoji = fig.axes
    assert [digits.get_title().split(":")[0], emoji.get_title().split(":")[0]] == ["digits", "emoji"]

    def colours(ax):
        return {c.get_label(): c.lines[0].get_color() for c in ax.containers}

    assert colours(emoji)["fast"] == colours(digits)["fast"] != colours(digits)["diffdfkd"]


def test_the_goal_block_reads_the_committed_results_under_todays_names():
    """The committed comparison folders predate the renames: the goals still find the shipped row."""
    goals = _script("goals")
    rows = goals.rows_at("digits", 100)
    assert goals.ours(rows)["name"] == "diffdfkd" and "diffdfkd_no_adv" in rows and "unguided" in rows
    assert goals.ours(rows)["overrides"].get("guidance.adv_weight") == 1.0


@pytest.mark.parametrize("world", sorted(WORLD_CONFIGS))
def test_every_sweep_candidate_passes_the_up_front_checks(world):
    sweep = _script("tune_digits").SWEEP
    assert any("guidance.mode=none" in c for c in sweep)  # the unguided candidates are what can fail
    for candidate in sweep:
        check_online(load_config(WORLD_CONFIGS[world], candidate))


def test_pooled_agreement_leaves_out_the_students_own_rows_and_pools_each_rows_seeds():
    pooled = _script("pooled_agreement").pooled
    row_of = {"fast/seed0": "fast", "fast/seed1": "fast", "cmi/seed0": "cmi", "unguided/seed0": "unguided"}
    per_set = {"fast/seed0": 0.5, "fast/seed1": 0.7, "cmi/seed0": 0.4, "unguided/seed0": 0.9}
    per_row, score = pooled(per_set, row_of, {"diffdfkd"})
    assert per_row == pytest.approx({"fast": 0.6, "cmi": 0.4, "unguided": 0.9})
    assert score == pytest.approx((0.6 + 0.4 + 0.9) / 3)  # each row counts once, whatever its seeds
    per_row, score = pooled(per_set, row_of, {"fast"})  # a baseline is not scored on its own images
    assert set(per_row) == {"cmi", "unguided"} and score == pytest.approx(0.65)
    # the foreign score: a DiffDFKD student leaves out unguided too (the same diffusion generator)
    assert pooled(per_set, row_of, {"diffdfkd", "unguided"})[1] == pytest.approx(0.5)
    assert math.isnan(pooled(per_set, row_of, {"fast", "cmi", "unguided"})[1])  # nothing left to score on


def test_cross_source_check_compares_two_rows_on_the_pools_foreign_to_both():
    check = _script("pooled_agreement").cross_source_check
    source_of = {"diffdfkd": "diffusion", "unguided": "diffusion", "fast": "fast", "cmi": "cmi"}

    def run(row, top1, **agreement):
        return {"row": row, "seed": 0, "student_top1_private_test": top1, "private_test_n": 600,
                "agreement_per_pool_row": agreement}  # fmt: skip

    records = [
        run("diffdfkd", 0.50, fast=0.51, cmi=0.37, unguided=0.66),
        run("fast", 0.58, cmi=0.42, unguided=0.53),
        run("cmi", 0.56, fast=0.56, unguided=0.45),
        run("unguided", 0.44, fast=0.40, cmi=0.28),
    ]
    pairs = {tuple(p["rows"]): p for p in check(records, source_of)}
    # cmi vs fast: 2 points apart, inside 2 standard errors (about 5.7 here), so not checked;
    # diffdfkd vs unguided: one source, not a cross-source pair
    assert set(pairs) == {
        ("cmi", "diffdfkd"),
        ("cmi", "unguided"),
        ("diffdfkd", "fast"),
        ("fast", "unguided"),
    }
    assert pairs[("diffdfkd", "fast")]["pool_rows"] == ["cmi"]  # unguided shares diffdfkd's generator
    assert pairs[("diffdfkd", "fast")]["foreign_agreement"] == pytest.approx([0.37, 0.42])
    assert all(p["ordered_as_private"] for p in pairs.values())
    records[1]["agreement_per_pool_row"]["cmi"] = 0.30  # now fast looks worse than diffdfkd on cmi's images
    pairs = {tuple(p["rows"]): p for p in check(records, source_of)}
    assert not pairs[("diffdfkd", "fast")]["ordered_as_private"]


def test_row_flops_averages_each_kind_of_round_over_the_run(monkeypatch):
    """Warm-up rounds of the online student cost less than later ones; Fast's unwritten warm-up rounds
    cost as much as written ones: both enter the per-image figure in proportion."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    row_flops = _script("row_flops")
    # each world's rows are counted at the budget its comparison runs them at
    assert row_flops.row_budget("digits", "deepinversion", None) == {
        "synth.images_per_class": 100,
        "synth.batch_size": 100,
    }
    assert row_flops.row_budget("emoji", "fast", None)["synth.images_per_class"] == 100
    counted = []

    def fake_count(config):
        counted.append(config)
        assert config.synth.images_per_class * 12 == config.synth.batch_size  # one round
        return 100.0 if config.guidance.adv_weight and config.online.warmup_rounds == 0 else 60.0

    monkeypatch.setattr(row_flops, "counted_flops", fake_count)
    base = load_config(WORLD_CONFIGS["emoji"])  # 1,200 images in 50 rounds of 24, 5 warm-up rounds
    ours = row_flops.row_flops(base, 12)
    assert ours["rounds"] == 50 and ours["online_warmup_rounds"] == 5
    assert ours["flops_per_image"] == pytest.approx((5 * 60 + 45 * 100) / 1200)
    fast = replace(base, **{"synth.source": "fast", "guidance.adv_weight": 0.0})
    record = row_flops.row_flops(fast, 12)
    assert counted[-1].fast.warmup_rounds == 0  # the counted round is a written one
    assert record["flops_per_image"] == pytest.approx((50 + 20) * 60 / 1200)


def test_emoji_goal_rows_pool_each_rows_seeds_across_its_records(tmp_path):
    """A row's seeds come from every record EMOJI_RUNS names, a seed once (the first file's); kd_real
    is never borrowed from another budget (a larger one gives every student more KD steps); a win must
    also clear 2 s.e."""
    goals = _script("goals")
    (tmp_path / "emoji-pool" / "levers").mkdir(parents=True)
    (tmp_path / "emoji").mkdir()
    pool = [
        {"row": "diffdfkd_adv3", "seed": k, "student_top1_private_test": v}
        for k, v in enumerate([0.60, 0.62, 0.61])
    ]
    pool += [{"row": "kd_real", "seed": 1, "student_top1_private_test": 0.66}]
    pool += [{"row": "kd_real", "seed": 0, "student_top1_private_test": 0.10}]  # the bench's seed 0 wins
    (tmp_path / goals.POOL).write_text(json.dumps({"runs": pool}))
    bench = {"fast": [{"seed": 0, "student_top1_private_test": 0.55}, {"seed": 1, "student_top1_private_test": 0.59}],
             "kd_real": [{"seed": 0, "student_top1_private_test": 0.64}]}  # fmt: skip
    (tmp_path / goals.BENCH_SEEDS).write_text(json.dumps(bench))
    rows = goals.emoji_rows(100, tmp_path)
    assert rows["diffdfkd"]["kind"] == "ours" and rows["diffdfkd"]["seeds"] == 3
    assert rows["diffdfkd"]["student_top1_mean"] == pytest.approx(0.61)
    assert rows["kd_real"]["seed_ids"] == [0, 1] and rows["kd_real"]["student_top1_mean"] == pytest.approx(
        0.65
    )
    assert goals.emoji_rows(500, tmp_path) == {}  # nothing run at 500
    (tmp_path / "emoji-500").mkdir()
    at_500 = [{"row": "diffdfkd", "seed": 0, "student_top1_private_test": 0.645}]
    (tmp_path / "emoji-500" / "runs.json").write_text(json.dumps({"runs": at_500}))
    assert list(goals.emoji_rows(500, tmp_path)) == ["diffdfkd"]  # kd_real at 100 does not stand for 500
    assert goals.goal_block(tmp_path)["emoji"]["500_per_class"]["met"] is None  # not run, not met
    at_500 += [
        {"row": "kd_real", "seed": k, "student_top1_private_test": v} for k, v in [(0, 0.64), (1, 0.66)]
    ]
    (tmp_path / "emoji-500" / "runs.json").write_text(json.dumps({"runs": at_500}))
    rows_500 = goals.emoji_rows(500, tmp_path)
    assert rows_500["diffdfkd"]["kind"] == "ours" and rows_500["kd_real"]["kind"] == "upper_bound"
    block = goals.goal_block(tmp_path)["emoji"]
    assert block["100_per_class"]["against"] == "fast" and block["100_per_class"]["points"] == pytest.approx(
        4.0
    )
    # +4 points, but the standard error (about 2.1) makes it less than 2 s.e.: not met
    assert block["100_per_class"]["se_points"] > 2 and block["100_per_class"]["met"] is False
    assert block["500_per_class"]["against"] == "kd_real" and block["500_per_class"]["met"] is True  # -0.5


def test_emoji_pool_record_keeps_committed_runs_whose_folders_are_absent(tmp_path, monkeypatch):
    """runs.json is the committed record; a fresh checkout has no run folders: a new run joins the
    record, it does not replace it, and a run present both ways takes its folder's figures, per class
    and of its synthetic set too."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    emoji_pool = _script("emoji_pool")
    old = [
        {"row": "fast", "seed": 0, "student_top1_private_test": 0.64},
        {"row": "diffdfkd", "seed": 1, "student_top1_private_test": 0.10},
    ]
    (tmp_path / "runs.json").write_text(json.dumps({"runs": old}))
    for row, seed, top1 in [("diffdfkd", 1, 0.66), ("diffdfkd", 2, 0.65)]:
        folder = tmp_path / "runs" / row / f"seed{seed}"
        (folder / "student").mkdir(parents=True)
        (folder / "student" / "student.safetensors").write_bytes(b"")
        (folder / "synth").mkdir()
        (folder / "synth" / "classes.json").write_text(json.dumps(["face", "hand"]))
        result = {
            "student_top1": top1,
            "student_eval": {"per_class": [top1 + 0.1, top1 - 0.1]},
            "synthesis_s_per_image": 0.9,
            "synthetic_images": 6000,
            "look_mix_of_synthetic": {"noto": 0.8, "fluent_flat": 0.2},
            "bn_distance_of_synthetic": 3.5,
        }
        (folder / "results.json").write_text(json.dumps(result))
    emoji_pool.record_runs(tmp_path)
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [(r["row"], r["seed"], r["student_top1_private_test"]) for r in runs] == [
        ("diffdfkd", 1, 0.66),
        ("diffdfkd", 2, 0.65),
        ("fast", 0, 0.64),
    ]
    assert runs[0]["student_per_class_private_test"] == {"face": 0.76, "hand": 0.56}  # named by class
    assert runs[0]["style_mix_of_synthetic"]["noto"] == 0.8 and runs[0]["bn_distance_of_synthetic"] == 3.5
    assert runs[0]["teacher_accuracy_on_synthetic"] is None  # absent from this results.json: not invented
    (tmp_path / "runs.json").write_text('{"runs": [')  # cut short: named, not a traceback after hours of work
    with pytest.raises(ValueError, match="is not a runs record"):
        emoji_pool.recorded_runs(tmp_path / "runs.json")
