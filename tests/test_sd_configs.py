"""The Stable Diffusion configs: the shipped recipe against the paper's, and what the normalised step
means at SD scale (SD 1.5's latent scaling 0.18215 and scheduler, tiny random widths)."""

import importlib
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffdfkd.config import GuidanceConfig, load_config
from diffdfkd.diffusion.components import decode_latents, encode_prompts
from diffdfkd.diffusion.denoiser import CFGDenoiser, Step, alpha_bar
from diffdfkd.guidance.guide import TeacherGuide
from diffdfkd.guidance.modes import build_mode

ROOT = Path(__file__).resolve().parent.parent


sys.path.insert(0, str(ROOT / "benchmarks"))  # sd15.py: the benchmarks' SD 1.5 builder, not library code
sd15 = importlib.import_module("sd15")


@pytest.mark.parametrize("name", ["cifar10_sd15", "cifar100_sd15"])
def test_the_paper_recipe_is_one_config_away_and_differs_only_in_guidance(name):
    shipped, paper = (load_config(ROOT / "configs" / f"{n}.yaml") for n in (name, f"{name}_paper"))
    assert (paper.guidance.step_norm, paper.guidance.step_size, paper.guidance.adv_weight) == (
        "none",
        1.0,
        0.0,
    )
    assert (shipped.guidance.step_norm, shipped.guidance.step_size, shipped.guidance.adv_weight) == (
        "sample",
        0.1,
        1.0,
    )
    differ = {k for k, v in asdict(shipped).items() if asdict(paper)[k] != v}
    assert differ == {"guidance", "online", "out_dir"}
    for n in (name, f"{name}_paper"):  # the package ships the same files
        assert (ROOT / "configs" / f"{n}.yaml").read_text() == (
            ROOT / "src" / "diffdfkd" / "configs" / f"{n}.yaml"
        ).read_text()


def test_the_normalised_step_moves_each_latent_by_step_size_sigma_t_at_sd_scale(make_teacher):
    components = sd15.sd15_components(tiny=True)
    assert components.vae.config.scaling_factor == 0.18215
    assert {k: components.scheduler.config[k] for k in sd15.SD15_SCHEDULER} == sd15.SD15_SCHEDULER
    targets = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    cond = encode_prompts(components, ["a realistic photo"]).expand(4, -1, -1)
    denoiser = CFGDenoiser(components, cond, encode_prompts(components, [""]), cfg_scale=3.0)
    guide = TeacherGuide(make_teacher(), lambda x0: decode_latents(components, x0), group_size=4)
    config = load_config(ROOT / "configs" / "cifar10_sd15.yaml").guidance
    mode = build_mode(config, denoiser, guide)
    raw = build_mode(GuidanceConfig(step_norm="none", step_size=1.0), denoiser, guide)
    scheduler = components.scheduler
    scheduler.set_timesteps(50)
    z = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    raw_shifts = []
    for i in (0, 25, 49):  # from pure noise (sigma ~ 1) to the last step (sigma ~ 0.03)
        t = scheduler.timesteps[i]
        step = Step(i, 50, t, alpha_bar(scheduler, i, t))
        sigma = math.sqrt(1 - step.abar)
        shift = (z - mode.update(z, step, targets)).flatten(1).pow(2).mean(dim=1).sqrt()
        torch.testing.assert_close(shift, torch.full((4,), config.step_size * sigma), rtol=1e-4, atol=0)
        raw_shifts.append((z - raw.update(z, step, targets)).flatten(1).pow(2).mean(dim=1).sqrt())
    # the raw step's size is the loss's scale: nothing ties it to sigma_t (here it is far from it)
    raw_shifts = torch.stack(raw_shifts)
    assert not torch.allclose(raw_shifts, torch.full_like(raw_shifts, 0.1), rtol=0.5)
