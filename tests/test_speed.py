"""Speed settings and the synthesis-throughput benchmark (CPU, tiny configs)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from diffdfkd.diffusion.components import decode_latents
from diffdfkd.diffusion.denoiser import cfg_eps, predict_x0
from diffdfkd.diffusion.speed import apply_speed_settings
from diffdfkd.guidance.guide import TeacherGuide

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their sibling sd15.py as scripts do
sd15_components = importlib.import_module("sd15").sd15_components


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "synth_throughput", ROOT / "benchmarks" / "synth_throughput.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_sd15_architecture_on_meta():
    """The full build has SD 1.5's parameter counts (UNet 859.5M, VAE 83.7M, CLIP-L text 123.1M)."""
    c = sd15_components(tiny=False, device="meta")
    counts = [sum(p.numel() for p in m.parameters()) for m in (c.unet, c.vae, c.text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert c.native_resolution == 512 and c.vae.config.scaling_factor == 0.18215
    assert c.tokenizer.model_max_length == 77 and c.scheduler.config.beta_schedule == "scaled_linear"


def guided_grad(components, teacher, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``grad_{z_t} L`` of one full guided pass (the sampler's pieces and the library's guide)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 8, 8, generator=generator).requires_grad_(True)
    cond = torch.randn(2, 77, 32, generator=generator)
    eps = cfg_eps(components, z, torch.tensor(500), cond, torch.zeros_like(cond), 3.0, 0.5)
    guide = TeacherGuide(teacher, partial(decode_latents, components), group_size=1)
    out = guide(predict_x0(z, eps, 0.5), z, torch.eye(3)[:2])
    return out.grad, out.losses["total"]


def rel_error(a: tuple[torch.Tensor, float], b: tuple[torch.Tensor, float]) -> float:
    """Relative gradient error; the losses must agree to fp32 rounding."""
    assert math.isclose(a[1], b[1], rel_tol=1e-5)
    return float((a[0] - b[0]).norm() / b[0].norm())


def test_speed_settings_keep_the_guidance_gradient(make_teacher):
    """Classic attention, checkpointing and channels_last change only fp32 rounding (channels_last CPU
    convolutions: ~5e-4 here, as far from an fp64 reference as eager is); a compiled teacher (eager
    backend: the same graph capture, with the guide's BatchNorm hooks new at every call) changes nothing."""
    components, teacher = sd15_components(tiny=True), make_teacher()
    expected = [guided_grad(components, teacher, seed) for seed in (0, 1)]
    apply_speed_settings(components, teacher, attention="classic", grad_checkpointing=True)
    assert rel_error(guided_grad(components, teacher), expected[0]) < 1e-3
    apply_speed_settings(components, teacher, attention="sdpa", grad_checkpointing=False, channels_last=True)
    assert rel_error(guided_grad(components, teacher), expected[0]) < 2e-3
    apply_speed_settings(components, teacher, channels_last=False)
    apply_speed_settings(
        components, teacher, compile=True, compile_backend="eager", compile_parts=("teacher",)
    )
    for seed in (0, 1, 0):  # new inputs and new hooks, the same compiled graph
        assert rel_error(guided_grad(components, teacher, seed), expected[seed]) < 1e-6
    with pytest.raises(ValueError, match="compile part"):
        apply_speed_settings(components, compile=True, compile_parts=("text_encoder",))


@pytest.mark.slow  # the benchmark script over every kind of row
def test_throughput_smoke(tmp_path: Path):
    """``--tiny --steps 2`` writes cpu_tiny.json/.md with finite figures for every kind of row."""
    bench = load_bench()
    # Every kind of setting once (the combination rows only combine these).
    modes = ["reference", "ours", "one_pass", "detach_unet", "every2", "window", "half_res", "tiny_decoder"]
    argv = ["--tiny", "--steps", "2", "--batch-size", "2", "--threads", "1", "--out", str(tmp_path)]
    bench.main([*argv, "--modes", *modes, "--adapt-ranks", "0", "4"])
    result = json.loads((tmp_path / "cpu_tiny.json").read_text())
    assert [r["mode"] for r in result["rows"]] == modes
    full, lora = result["adapt_rows"]  # the LoRA rows: one adapt-generator step each
    assert (full["row"], lora["row"]) == ("full", "lora4") and 0 < lora["trainable_params"] < full[
        "trainable_params"
    ] / 10
    assert 0 < lora["adam_state_gib_measured"] < full["adam_state_gib_measured"] and lora["s_per_step"] > 0
    assert "LoRA against the whole UNet" in (tmp_path / "cpu_tiny.md").read_text()
    for r in result["rows"]:
        assert "error" not in r, r
        for key in ("s_per_guided_step", "s_per_image", "images_per_s", "mfu", "speedup_vs_reference"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["mode"], key)
        assert r["flops"]["per_image"] > 0
    rows = {r["mode"]: r for r in result["rows"]}
    # Same mathematics, same counted FLOPs; the approximations count fewer.
    assert rows["ours"]["flops"]["per_image"] == pytest.approx(rows["reference"]["flops"]["per_image"])
    for name in ("one_pass", "detach_unet", "every2", "window", "half_res"):
        assert rows[name]["flops"]["per_image"] < rows["ours"]["flops"]["per_image"]
    assert rows["every2"]["guided_steps_of_50"] == 25 and rows["window"]["guided_steps_of_50"] == 25


@pytest.mark.slow  # FLOPs counted on SD 1.5-sized random models
def test_taesd_guidance_counts_fewer_flops_at_sd15_scale():
    """At 512 px the guidance gradient through TAESD costs less than through the VAE decoder, and the
    unguided steps and the saved image's decode are unchanged."""
    import dataclasses

    taesd = importlib.import_module("sd15").taesd
    bench = load_bench()
    meta = dataclasses.replace(sd15_components(tiny=False, device="meta"), device=torch.device("cpu"))
    teacher = bench.cifar_teacher("cpu").to("meta")
    full = bench.decomposed_flops(meta, teacher, "full", 1, 64)
    tiny = bench.decomposed_flops(meta, teacher, "full", 1, 64, taesd("cpu").to("meta"))
    assert tiny["guided_step"] < full["guided_step"]
    assert tiny["unguided_step"] == full["unguided_step"] and tiny["final_decode"] == full["final_decode"]
