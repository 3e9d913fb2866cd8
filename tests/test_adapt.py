"""``diffdfkd adapt-generator``: the generator fine-tuned to the teacher without data, resumable."""

import json

import pytest
import torch

from diffdfkd.bench import WORLD_CONFIGS
from diffdfkd.cli import main
from diffdfkd.config import ConfigError, load_config
from diffdfkd.diffusion.components import load_components
from diffdfkd.synth.adapt import CHECKPOINT, INFO, AdaptSettings, adapt_generator
from diffdfkd.synth.run import resolve_config

# The far world's shipped generator with a 3-step schedule: a few adaptation steps take seconds.
CONFIG = resolve_config(load_config(WORLD_CONFIGS["digits-mnist"], ["generator.num_steps=3"]))
SETTINGS = AdaptSettings(steps=4, lr=1e-3, checkpoint_every=2)


def _unet_bytes(folder):
    return (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """An uninterrupted adaptation: (folder, info)."""
    out = tmp_path_factory.mktemp("adapt") / "generator"
    return out, adapt_generator(CONFIG, out, SETTINGS, progress=False)


def test_adaptation_moves_the_unet_and_writes_a_whole_pipeline(adapted):
    out, info = adapted
    before = load_components(CONFIG.generator.path).unet.state_dict()
    after = load_components(out).unet.state_dict()  # every part loads from the new folder
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, "the teacher's loss reaches most of the UNet"
    assert json.loads((out / INFO).read_text()) == info and info["last"]["step"] == SETTINGS.steps - 1
    assert not (out / CHECKPOINT).exists() and not out.with_name(out.name + ".partial").exists()


def test_an_interrupted_adaptation_resumes_from_its_checkpoint_byte_identical(adapted, tmp_path, monkeypatch):
    out = tmp_path / "generator"
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def dies_at_the_third_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        adapt_generator(CONFIG, out, SETTINGS, progress=False)
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    assert torch.load(partial / CHECKPOINT, weights_only=True)["step"] == 2 and not out.exists()
    info = adapt_generator(CONFIG, out, SETTINGS, progress=False)
    assert _unet_bytes(out) == _unet_bytes(adapted[0]), "the resumed run ends where the uninterrupted one did"
    assert info["last"] == adapted[1]["last"]
    assert adapt_generator(CONFIG, out, SETTINGS, progress=False) == info, "a finished folder is kept"


def test_adaptation_refuses_what_it_cannot_do(adapted, tmp_path, capsys):
    with pytest.raises(ConfigError, match="another config or settings"):
        adapt_generator(
            CONFIG, adapted[0], AdaptSettings(steps=5, lr=1e-3, checkpoint_every=2), progress=False
        )
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="not an adapted generator"):
        adapt_generator(CONFIG, tmp_path / "taken", SETTINGS, progress=False)
    assert main(["adapt-generator", "--config", str(WORLD_CONFIGS["digits-mnist"]), "--out", str(tmp_path / "g"),
                 "--lr", "0"]) == 2  # fmt: skip
    assert "--lr must be > 0, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
