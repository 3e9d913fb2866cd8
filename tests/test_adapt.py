"""``diffdfkd adapt-generator``: the generator fine-tuned to the teacher without data, resumable."""

import json

import pytest
import torch

from diffdfkd.bench import WORLD_CONFIGS
from diffdfkd.cli import main
from diffdfkd.config import ConfigError, load_config
from diffdfkd.diffusion.components import load_components
from diffdfkd.experiment import resolve_config
from diffdfkd.synth.adapt import CHECKPOINT, INFO, LORA_TARGETS, AdaptSettings, adapt_generator

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


def _interrupt_then_resume(out, settings, monkeypatch):
    """Adapt to ``out``, killed at the third optimiser step, then rerun: the rerun's info."""
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def dies_at_the_third_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        adapt_generator(CONFIG, out, settings, progress=False)
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    assert torch.load(partial / CHECKPOINT, weights_only=True)["step"] == 2 and not out.exists()
    return adapt_generator(CONFIG, out, settings, progress=False)


def test_an_interrupted_adaptation_resumes_from_its_checkpoint_byte_identical(adapted, tmp_path, monkeypatch):
    out = tmp_path / "generator"
    info = _interrupt_then_resume(out, SETTINGS, monkeypatch)
    assert _unet_bytes(out) == _unet_bytes(adapted[0]), "the resumed run ends where the uninterrupted one did"
    assert info["last"] == adapted[1]["last"]
    assert adapt_generator(CONFIG, out, SETTINGS, progress=False) == info, "a finished folder is kept"


LORA = AdaptSettings(steps=4, lr=1e-2, checkpoint_every=2, lora_rank=4)


@pytest.fixture(scope="module")
def lora_adapted(tmp_path_factory):
    """An uninterrupted rank-4 LoRA adaptation: (folder, info)."""
    out = tmp_path_factory.mktemp("lora") / "generator"
    return out, adapt_generator(CONFIG, out, LORA, progress=False)


def test_lora_trains_only_the_attention_adapter_and_merges_it(lora_adapted):
    out, info = lora_adapted
    base = load_components(CONFIG.generator.path).unet
    before, after = base.state_dict(), load_components(out).unet.state_dict()
    assert before.keys() == after.keys(), "the written UNet is a plain one, the adapter merged"
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    projections = {f"{name}.{proj}.weight" for name, m in base.named_modules() if hasattr(m, "to_q")
                   for proj in LORA_TARGETS}  # fmt: skip
    assert moved == projections, "exactly the attention projections' weights change"
    # W + B A per projection: r * (in + out) parameters each
    lora_params = sum(LORA.lora_rank * sum(after[k].shape) for k in projections)
    assert info["trainable_params"] == lora_params < sum(v.numel() for v in before.values()) // 10
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_a_lora_adapted_generator_loads_with_stock_diffusers(lora_adapted):
    from diffusers import StableDiffusionPipeline

    out, _ = lora_adapted
    merged = StableDiffusionPipeline.from_pretrained(out).unet
    pipe = StableDiffusionPipeline.from_pretrained(CONFIG.generator.path)
    pipe.load_lora_weights(out)  # the adapter file onto the base pipeline
    z = torch.randn(2, merged.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 5, merged.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = merged(z, 500, encoder_hidden_states=cond).sample
        got = pipe.unet(z, 500, encoder_hidden_states=cond).sample
        pipe.unet.disable_lora()
        base = pipe.unet(z, 500, encoder_hidden_states=cond).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(base, want, atol=1e-4), "the adapter changes the UNet"


def test_an_interrupted_lora_adaptation_resumes_byte_identical(lora_adapted, tmp_path, monkeypatch):
    out = tmp_path / "generator"
    info = _interrupt_then_resume(out, LORA, monkeypatch)
    assert _unet_bytes(out) == _unet_bytes(lora_adapted[0]) and info["last"] == lora_adapted[1]["last"]
    lora_file = "pytorch_lora_weights.safetensors"
    assert (out / lora_file).read_bytes() == (lora_adapted[0] / lora_file).read_bytes()


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
