"""The command line: help, version, errors without tracebacks, train-teacher and evaluate end to end."""

import json

import pytest

from diffdfkd import __version__
from diffdfkd.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_every_command_has_help(capsys):
    for command in (["world", "build-generator"], ["train-teacher"], ["evaluate"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "default" in capsys.readouterr().out


def test_world_list(capsys):
    assert main(["world", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "private:test" in out


def test_train_teacher_then_evaluate(tmp_path, capsys):
    out = tmp_path / "teacher"
    args = ["train-teacher", "--arch", "lenet5", "--limit", "200", "--out", str(out), "--half"]
    assert main([*args, "epochs=2", "batch_size=32"]) == 0
    assert (out / "teacher.safetensors").is_file() and (out / "config.yaml").is_file()
    report = tmp_path / "report.json"
    argv = ["evaluate", "--arch", "lenet5", "--weights", str(out / "teacher.safetensors")]
    assert main([*argv, "--split", "private:test", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "confusion matrix" in printed
    result = json.loads(report.read_text())
    assert result["n"] == 597 and 0.0 <= result["top1"] <= 1.0
    assert sum(map(sum, result["confusion"])) == 597


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train-teacher", "--arch", "resnet1000"], "unknown model 'resnet1000'"),
        (["train-teacher", "--split", "private:validation"], "unknown split"),
        (["train-teacher", "--arch", "lenet5", "epoch=3"], "unknown config key epoch"),
        (["evaluate", "--weights", "/nonexistent.safetensors"], "does not exist"),
        (["evaluate", "world=cifar"], "unknown world 'cifar'"),
    ],
)
def test_bad_input_gives_a_clear_error_not_a_traceback(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train-teacher" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_quick_end_to_end(tmp_path, capsys):
    """The main job on the shipped digits world with tiny budgets: report files and numbers exist."""
    from diffdfkd.worlds import get_world

    if not (get_world("digits").generator / "model_index.json").is_file():
        pytest.skip("the digits generator is not shipped in this checkout")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "student top-1 on digits private:test" in printed
    for name in ("report.html", "report.md", "results.json", "synthetic_grid.png", "training_curves.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["teacher_top1"] > 0.98 and 0.0 <= results["student_top1"] <= 1.0
    assert results["synthetic_images"] == 40 and results["test_data"] == "digits private:test"
