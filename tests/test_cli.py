"""The command line: help, version, errors without tracebacks, train-teacher and evaluate end to end."""

import argparse
import json

import pytest

from diffdfkd import __version__
from diffdfkd.cli import build_parser, main
from diffdfkd.evaluate import evaluate
from diffdfkd.models import create_model
from diffdfkd.models.teacher import load_weights
from diffdfkd.worlds import get_world


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(argv prefix, parser)`` of every command that runs something (sub-commands walked down)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, (*prefix, name))
            return
    yield prefix, parser


def test_every_command_lists_each_flag_with_its_help_and_default(capsys):
    commands = dict(leaf_commands(build_parser()))
    assert {" ".join(c) for c in commands} == {
        "world list", "world build-data", "world build-generator", "world build-judge", "world build-tiny-decoder", "train-teacher",
        "evaluate", "check", "synthesize", "adapt-generator", "distill", "run", "demo", "bench",
    }  # fmt: skip
    for command, parser in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        shown = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{command}: {action.dest} has no help text"
            names = action.option_strings or [action.dest]
            assert all(name in shown for name in names), (command, names)
            assert " ".join(action.help.split()) in shown, (command, action.dest)
            if action.option_strings and action.default is not None:
                assert f"(default: {action.default})" in shown, (command, action.dest)


def test_world_list_names_every_world_with_its_splits_and_parts(capsys):
    """Each registered world's block names its classes, its splits and whether its parts are shipped."""
    from diffdfkd.worlds import get_world, list_worlds

    assert main(["world", "list"]) == 0
    out = capsys.readouterr().out
    starts = [out.index(f"\n{name}: " if k else f"{name}: ") for k, name in enumerate(list_worlds())]
    blocks = [out[a:b] for a, b in zip(starts, [*starts[1:], len(out)], strict=True)]
    for name, block in zip(list_worlds(), blocks, strict=True):
        world = get_world(name)
        assert ", ".join(world.splits()) in block and ", ".join(world.class_names) in block
        for path in (world.teacher_weights, world.generator):
            assert f"{path} ({'shipped' if path.exists() else 'missing'})" in block


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
    confusion = result["confusion"]
    assert result["n"] == 597 and sum(map(sum, confusion)) == 597
    assert result["top1"] == pytest.approx(sum(confusion[k][k] for k in range(10)) / 597)
    assert f"{result['top1']:.4f}" in printed


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


@pytest.mark.slow  # the quick demo, end to end
def test_demo_quick_end_to_end(tmp_path, capsys):
    """The main job on the shipped digits world with tiny budgets: report files and numbers exist."""
    if not (get_world("digits").generator / "model_index.json").is_file():
        pytest.skip("the digits generator is not shipped in this checkout")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "student top-1 on digits private:test" in printed
    for name in ("report.html", "report.md", "results.json", "synthetic_grid.png", "training_curves.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["teacher_top1"] > 0.98
    assert results["synthetic_images"] == 40 and results["test_data"] == "digits private:test"
    # the reported student top-1 is the saved student's, on the split it names
    student = load_weights(
        create_model(results["student"], num_classes=10), out / "student" / "student.safetensors"
    )
    images, labels = get_world("digits").load("private:test")
    assert evaluate(student, images, labels)["top1"] == pytest.approx(results["student_top1"], abs=1e-9)
    assert f"{results['student_top1']:.4f}" in printed
