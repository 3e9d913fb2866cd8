"""Teachers handed over as ``torch.export`` programs (``.pt2``), and TorchScript's fallback without its converter.

A ``.pt2`` teacher must give the eager network's logits, expose every BatchNorm layer (with its running
statistics) to the BN-statistics loss, and run ``check``, ``synthesize`` (guided, BN term on) and
``distill`` from the command line; ``check`` names the size it was exported for and refuses another.
"""

import logging
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from diffdfkd.baselines.deepinversion import DeepInversionSource
from diffdfkd.baselines.fast import FastSource
from diffdfkd.cli import main
from diffdfkd.guidance.teacher_loss import BNStatistics, NoBatchNormError, Units
from diffdfkd.models.exported import ExportedTeacherError, GraphBatchNorm
from diffdfkd.models.teacher import load_teacher
from diffdfkd.synth.dataset import load_synthetic


def _with_statistics(teacher):
    """``teacher`` with non-trivial BatchNorm running statistics (random tiny teachers have 0 / 1)."""
    with torch.no_grad():
        for layer in teacher.model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    return teacher


def export(model: nn.Module, path, *, size: int = 32, batch=True, decompose=False):
    """Save ``model`` as a user would: ``torch.export.export`` on ``[2, 3, size, size]``, batch free."""
    shapes = ({0: torch.export.Dim("batch")},) if batch else None
    program = torch.export.export(model, (torch.rand(2, 3, size, size),), dynamic_shapes=shapes)
    torch.export.save(program.run_decompositions() if decompose else program, str(path))
    return path


@pytest.fixture(scope="module")
def exported_teacher(make_teacher, tmp_path_factory):
    """The tiny random teacher (eager, with BN statistics) and its network saved as a ``.pt2``."""
    teacher = _with_statistics(make_teacher())
    return teacher, export(teacher.model, tmp_path_factory.mktemp("pt2") / "teacher.pt2")


def _bn_loss_and_grad(teacher, images):
    with BNStatistics(teacher.model, Units("group", 2)) as bn:
        logits = teacher(images)
        loss = bn.loss()
    return logits, loss, torch.autograd.grad(loss + logits.sum(), images)[0]


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "run_decompositions"])
def test_a_pt2_teacher_gives_the_eager_logits_bn_statistics_and_gradients(make_teacher, tmp_path, decompose):
    eager = _with_statistics(make_teacher())
    path = export(eager.model, tmp_path / "t.pt2", decompose=decompose)
    loaded = load_teacher("", path, class_names=eager.class_names)
    lifted = [m for m in loaded.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    originals = [m for m in eager.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(lifted) == len(originals) > 0 and all(isinstance(m, GraphBatchNorm) for m in lifted)
    for mine, theirs in zip(lifted, originals, strict=True):  # the running statistics are the file's
        assert torch.equal(mine.running_mean, theirs.running_mean) and torch.equal(
            mine.running_var, theirs.running_var
        )
    assert "exported for [*, 3, 32, 32]" in loaded.origin
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    images = images[:4]  # a batch size the program was not traced with
    (logits, loss, grad), (want_logits, want_loss, want_grad) = (
        _bn_loss_and_grad(t, images) for t in (loaded, eager)
    )
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5) and want_loss > 0
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_a_pt2_teacher_exported_for_another_input_is_refused_naming_both(make_teacher, tmp_path):
    model = make_teacher().model
    names = make_teacher().class_names
    fixed = export(model, tmp_path / "fixed.pt2", batch=False)
    with pytest.raises(ExportedTeacherError, match=r"fixed batch of 2.*Dim\('batch'\)"):
        load_teacher("", fixed, class_names=names)
    path = export(model, tmp_path / "t.pt2")
    with pytest.raises(
        ExportedTeacherError, match=r"exported for inputs \[\*, 3, 32, 32\].*teacher.input_size=24"
    ):
        load_teacher("", path, class_names=names, input_size=24)
    with pytest.raises(ExportedTeacherError, match=r"training mode.*model.eval\(\)"):
        load_teacher("", export(model.train(), tmp_path / "train.pt2"), class_names=names)
    model.eval()


def test_baselines_run_on_a_pt2_teacher(exported_teacher, make_config, tmp_path) -> None:
    eager, path = exported_teacher
    teacher = load_teacher("lenet5", path, class_names=eager.class_names)  # an arch set: the file wins
    config = make_config(
        tmp_path, **{"deepinversion.iterations": 2, "fast.warmup_rounds": 0, "fast.steps": 1}
    )
    targets = F.one_hot(torch.arange(4) % 3, 3).float()
    for source in (DeepInversionSource(config, teacher), FastSource(config, teacher)):
        batch = source.generate(torch.arange(4), targets)
        assert batch.logs[-1]["bn"] > 0 and torch.isfinite(batch.images).all()


def test_a_pt2_teacher_runs_check_synthesize_and_distill(
    exported_teacher, tiny_pipeline_dir, eval_folder, tmp_path, capsys
):
    eager, path = exported_teacher
    config = {
        "world": "mine",
        "out_dir": str(tmp_path / "run"),
        "eval_folder": str(eval_folder),
        "teacher": {"arch": "", "weights": str(path), "class_names": list(eager.class_names)},
        "generator": {"path": str(tiny_pipeline_dir), "num_steps": 2, "prompt": "a photo", "device": "cpu"},
        "guidance": {"bn_weight": 1.0},
        "synth": {"images_per_class": 2, "batch_size": 6, "group_size": 6, "samples_per_class_in_group": 2},
        "distill": {"student": "lenet5", "epochs": 1, "batch_size": 4},
    }
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(config))
    user = ["--config", str(tmp_path / "user.yaml")]
    assert main(["check", *user]) == 0
    layers = sum(isinstance(m, nn.BatchNorm2d) for m in eager.model.modules())
    assert f"exported for [*, 3, 32, 32], {layers} BatchNorm layers hooked" in capsys.readouterr().out
    assert main(["check", *user, "teacher.input_size=28"]) == 2
    assert "exported for inputs [*, 3, 32, 32]" in capsys.readouterr().err
    assert main(["synthesize", *user]) == 0
    data = load_synthetic(tmp_path / "run" / "synth")  # complete: every file matches its manifest row
    assert data.images.shape[0] == 6 and torch.isfinite(data.teacher_logits).all()
    assert main(["distill", *user]) == 0
    assert (tmp_path / "run" / "student" / "student.safetensors").is_file()


def test_torchscript_without_its_converter_falls_back_and_says_why(
    make_teacher, tmp_path, monkeypatch, caplog
):
    eager = _with_statistics(make_teacher())
    torch.jit.save(torch.jit.script(eager.model), str(tmp_path / "t.pt"))
    monkeypatch.setitem(sys.modules, "torch._export.converter", None)  # a torch without the private module
    with caplog.at_level(logging.WARNING, logger="diffdfkd.models.torchscript"):
        scripted = load_teacher("", tmp_path / "t.pt", class_names=eager.class_names)
    assert "no TorchScript converter" in caplog.text and "torch.export.save" in caplog.text
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), eager(images))
    with pytest.raises(NoBatchNormError, match="compiled TorchScript"):
        BNStatistics(scripted.model, Units("sample"))
