"""The teacher wrapper: normalisation, resizing, frozen weights, checkpoint errors."""

import pickle

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from diffdfkd.models import create_model
from diffdfkd.models.teacher import CheckpointError, Teacher, load_teacher, read_state_dict

NAMES = tuple(f"c{i}" for i in range(10))


class Probe(nn.Module):
    """Records what the wrapper feeds the model."""

    def forward(self, x):
        self.seen = x
        return x.flatten(1)[:, :10]


def test_normalises_resizes_and_matches_channels():
    probe = Probe()
    teacher = Teacher(probe, input_size=16, in_channels=1, mean=(0.5,), std=(0.25,), class_names=NAMES)
    images = torch.rand(2, 3, 32, 32)
    teacher(images)
    assert probe.seen.shape == (2, 1, 16, 16)
    grey = torch.nn.functional.interpolate(
        images.mean(1, keepdim=True), size=(16, 16), mode="bicubic", antialias=True
    )
    torch.testing.assert_close(probe.seen, (grey - 0.5) / 0.25)


def test_weights_frozen_eval_mode_but_gradient_reaches_input():
    teacher = Teacher(
        create_model("cnn_small"),
        input_size=32,
        in_channels=3,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        class_names=NAMES,
    )
    teacher.train()
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    teacher(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_loads_safetensors_and_nested_torch_checkpoints(tmp_path):
    model = create_model("lenet5")
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
        tmp_path / "w.pth",
    )
    for name in ("w.safetensors", "w.pth"):
        teacher = load_teacher("lenet5", tmp_path / name, class_names=NAMES, mean=(0.5,) * 3, std=(0.5,) * 3)
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(teacher(x), model.eval()((x - 0.5) / 0.5))


def test_wrong_number_of_classes_is_named(tmp_path):
    save_file(create_model("lenet5", num_classes=100).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="wrong number of classes"):
        load_teacher("lenet5", tmp_path / "w.safetensors", class_names=NAMES)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = create_model("lenet5").state_dict()
    state["extra.weight"] = state.pop("classifier.4.weight")
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \['classifier.4.weight'\].*extra.weight"):
        load_teacher("lenet5", tmp_path / "w.safetensors", class_names=NAMES)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "w.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        read_state_dict(tmp_path / "w.pth")
    (tmp_path / "w.safetensors").write_text("hello")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_state_dict(tmp_path / "w.safetensors")


class Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickle_with_code_is_refused(tmp_path):
    with open(tmp_path / "w.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    torch.save({"weights": Evil()}, tmp_path / "w2.pt")
    for name in ("w.pt", "w2.pt"):
        with pytest.raises(CheckpointError):
            read_state_dict(tmp_path / name)


def test_torchscript_teacher(tmp_path):
    model = create_model("lenet5").eval()
    torch.jit.script(model).save(str(tmp_path / "t.pt"))
    teacher = load_teacher("", tmp_path / "t.pt", class_names=NAMES)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), model(x))


def test_the_teacher_shows_its_network_and_batchnorm_layers(make_teacher):
    """Callers hook BatchNorm statistics on ``network`` and list ``bn_layers()``; nobody reaches inside."""
    teacher = make_teacher(arch="resnet18")
    expected = [m for m in teacher.network.modules() if isinstance(m, nn.BatchNorm2d)]
    assert teacher.bn_layers() == expected and len(expected) > 0
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(teacher(images), teacher.network(teacher.preprocess(images)))
