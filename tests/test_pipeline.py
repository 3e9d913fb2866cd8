"""The end-to-end job on tiny parts: synthesize -> distill -> evaluate -> report, resume, refusals."""

import json

import pytest

from diffdfkd.config import ConfigError, replace
from diffdfkd.evaluate import evaluate
from diffdfkd.models import create_model
from diffdfkd.models.teacher import load_weights
from diffdfkd.pipeline import distill, run_experiment
from diffdfkd.synth.dataset import load_image_folder, load_synthetic


def _config(make_config, tmp_path, eval_folder, **overrides):
    base = {
        "out_dir": str(tmp_path / "run"),
        "eval_folder": str(eval_folder),
        "distill.student": "lenet5",
        "distill.epochs": 2,
        "distill.batch_size": 4,
        "distill.holdout_fraction": 0.2,
    }
    return replace(make_config(tmp_path / "run" / "synth"), **{**base, **overrides})


def test_run_writes_report_and_resumes(make_config, tmp_path, eval_folder):
    config = _config(make_config, tmp_path, eval_folder)
    summary = run_experiment(config, progress=False)
    out = tmp_path / "run"
    for name in (
        "report.md",
        "report.html",
        "results.json",
        "config.yaml",
        "run_info.json",
        "synthetic_grid.png",
        "training_curves.png",
        "student/student.safetensors",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["student_eval"]["n"] == 9
    assert results["bn_distance_of_synthetic"] > 0 and results["synthesis_s_per_image"] > 0
    # a user's eval folder is no world's PRIVATE split: no grid of it (tests/test_report_browser.py)
    assert not (out / "test_grid.png").exists()
    # the reported student top-1 is the saved student's on the eval folder
    student = load_weights(create_model("lenet5", num_classes=3), out / "student" / "student.safetensors")
    images, labels = load_image_folder(eval_folder, config.teacher.class_names)
    assert evaluate(student, images, labels)["top1"] == pytest.approx(results["student_top1"], abs=1e-9)
    assert results == json.loads(json.dumps(summary))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Honest protocol" in html
    assert "student (final epoch)" in (out / "report.md").read_text()

    # The same command again resumes: nothing is synthesised or trained twice, results are the same.
    synth_files = sorted(p.stat().st_mtime_ns for p in (out / "synth" / "images").rglob("*.png"))
    again = run_experiment(config, progress=False)
    assert again["student_top1"] == summary["student_top1"]
    assert sorted(p.stat().st_mtime_ns for p in (out / "synth" / "images").rglob("*.png")) == synth_files


def test_a_run_builds_its_teacher_once(make_config, tmp_path, eval_folder, monkeypatch):
    # every stage (check, synthesis, distillation, evaluation, report) is handed the run's one teacher
    import diffdfkd.models.teacher as teacher_module

    built = []
    load = teacher_module.load_teacher
    monkeypatch.setattr(teacher_module, "load_teacher", lambda *a, **kw: built.append(a) or load(*a, **kw))
    run_experiment(_config(make_config, tmp_path, eval_folder, **{"distill.epochs": 1}), progress=False)
    assert len(built) == 1


def test_changed_config_is_refused_naming_the_keys(make_config, tmp_path, eval_folder):
    config = _config(make_config, tmp_path, eval_folder, **{"distill.epochs": 1})
    run_experiment(config, progress=False)
    changed = replace(config, **{"distill.lr": 0.2, "guidance.bn_weight": 0.5})
    with pytest.raises(ConfigError, match=r"distill\.lr.*guidance\.bn_weight"):
        run_experiment(changed, progress=False)


def test_distill_refuses_a_dataset_with_other_classes(make_config, tmp_path, eval_folder, make_teacher):
    config = _config(make_config, tmp_path, eval_folder, **{"distill.epochs": 1})
    run_experiment(config, progress=False)
    data = load_synthetic(tmp_path / "run" / "synth")
    data.class_names = ("a", "b")
    with pytest.raises(ConfigError, match="2 classes, the teacher 3"):
        distill(config, data, progress=False)


def test_a_run_folder_from_an_older_config_schema_counts_as_changed(make_config, tmp_path, eval_folder):
    """A saved config.yaml with a key this version no longer has is another config (its keys named),
    not a crash of the comparison: refused without --overwrite, replaced with it."""
    import yaml

    from diffdfkd.check.folders import output_state
    from diffdfkd.config import to_dict

    config = _config(make_config, tmp_path, eval_folder)
    out = tmp_path / "run"
    out.mkdir(parents=True)
    written = to_dict(config)
    written["deepinversion"]["tv_weight"] = 0.5  # a key of an older DeepInversion recipe
    (out / "config.yaml").write_text(yaml.safe_dump(written))
    (out / "results.json").write_text("{}")  # a result: the folder is claimed (else it counts as new)
    with pytest.raises(ConfigError, match=r"changed: deepinversion\.tv_weight"):
        output_state(config, overwrite=False)
    assert output_state(config, overwrite=True) == "replaced"
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    assert output_state(config, overwrite=False) == "resumable"
