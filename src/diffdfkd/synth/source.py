"""Synthetic-data sources behind one interface, and the DiffDFKD diffusion source.

Every source (ours; later unguided diffusion, DeepInversion, real data) implements::

    source.generate(indices: LongTensor [B], targets: FloatTensor [B, K]) -> SynthBatch

where ``indices`` are global sample indices (they fix every seed, see ``sample_seed``) and ``targets``
are one-hot or soft class targets. Sources are registered by name in ``SOURCES`` as factories
``factory(config: ExperimentConfig, teacher: Teacher) -> source``, so a bench loops over names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.registry import Registry

if TYPE_CHECKING:
    from diffdfkd.diffusion.components import DiffusionComponents

SAMPLE_STREAM, GROUP_STREAM = 0, 1


def derive_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed from ``(run seed, stream, index)`` (numpy ``SeedSequence``: no collisions between
    e.g. (seed 0, index 1000) and (seed 1, index 0), unlike ``seed + index``)."""
    if seed < 0 or index < 0:
        raise ConfigError(f"seeds and indices must be >= 0, got seed={seed}, index={index}")
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index``'s generator: its initial noise ``z_T`` and its stochastic sampler noise."""
    return derive_seed(seed, SAMPLE_STREAM, index)


def group_seed(seed: int, group: int) -> int:
    """Seed of mixing group ``group``'s generator (Latent CutMix boxes and partners)."""
    return derive_seed(seed, GROUP_STREAM, group)


def layout_targets(indices: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """The dataset layout's one-hot targets ``[B, K]`` of samples ``indices [B]``: sample ``i`` has class
    ``(i // m) % K`` (``m = synth.samples_per_class_in_group``), so consecutive samples share a class."""
    return torch.nn.functional.one_hot((indices // per_class) % num_classes, num_classes).float()


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One seeded CPU generator per seed (CPU, so the same seed gives the same noise on any device)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


@dataclass
class SynthExtra:
    """Extra samples of a batch (DiffDFKD's decoded ``x0_hat`` at the CutMix steps).

    ``images [E, 3, H, W]`` in [0, 1]; ``targets [E, K]``; ``indices [E]`` the sample each came from;
    ``steps [E]`` the sampling step it was taken at.
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    steps: torch.Tensor


@dataclass
class SynthBatch:
    """What a source returns: ``images [B, 3, H, W]`` in [0, 1] (CPU) and ``targets [B, K]`` (possibly
    soft); optional ``extra`` samples; ``logs``: named values per step for logging."""

    images: torch.Tensor
    targets: torch.Tensor
    extra: SynthExtra | None = None
    logs: list[dict[str, float]] = field(default_factory=list)


class SyntheticSource(Protocol):
    """The one interface of every synthetic-data source."""

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch: ...


SOURCES: Registry[SyntheticSource] = Registry("synthetic-data source")


def check_groups(indices: torch.Tensor, group_size: int) -> torch.Tensor:
    """The mixing-group numbers ``[G]`` of a batch made of whole groups of consecutive indices."""
    batch = indices.numel()
    if batch % group_size:
        raise ValueError(f"a batch of {batch} samples is not a whole number of groups of {group_size}")
    blocks = indices.view(-1, group_size)
    expected = blocks[:, :1] + torch.arange(group_size)
    if not torch.equal(blocks, expected) or bool((blocks[:, 0] % group_size).any()):
        raise ValueError(
            f"indices must form whole groups of {group_size} consecutive indices starting at multiples of it"
        )
    return blocks[:, 0] // group_size


class DiffusionSource:
    """DiffDFKD: teacher-guided latent diffusion with Latent CutMix (or plain CFG with mode ``none``).

    Seeds come from ``config.seed`` and the indices only. Prompts are encoded once per class, so a
    sample's conditioning does not depend on its batch.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        teacher: torch.nn.Module,
        components: DiffusionComponents | None = None,
        student: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``teacher``: a ``Teacher`` (images in [0, 1] -> logits, ``class_names``); ``components``:
        already loaded parts (else loaded from ``config.generator``); ``student``: for ``L_adv``."""
        from diffdfkd.augment.cutmix import LatentCutMix
        from diffdfkd.diffusion.components import decode_latents, encode_prompts, load_components
        from diffdfkd.guidance.guide import TeacherGuide

        gen = config.generator
        if components is None:
            if not gen.path:
                raise ConfigError(
                    "generator.path is empty: resolve the world's generator before building the source"
                )
            components = load_components(
                gen.path,
                device=gen.device,
                dtype=gen.dtype,
                scheduler=gen.scheduler,
                gradient_checkpointing=gen.gradient_checkpointing,
            )
        self.components = components
        self.config = config
        self.class_names = tuple(teacher.class_names)
        self.teacher = teacher.to(components.device)
        if gen.channels_last or gen.compile:
            from diffdfkd.diffusion.speed import apply_speed_settings

            apply_speed_settings(
                components, self.teacher, channels_last=gen.channels_last, compile=gen.compile
            )
        resolution = gen.resolution or components.native_resolution
        if resolution % components.vae_scale_factor:
            raise ConfigError(
                f"generator.resolution={resolution} is not a multiple of the VAE factor {components.vae_scale_factor}"
            )
        self.latent_size = resolution // components.vae_scale_factor
        prompts = [
            gen.prompt_template.format(label=n.replace("_", " ")) if gen.prompt_template else gen.prompt
            for n in self.class_names
        ]
        self.class_embeds = encode_prompts(components, prompts)  # [K, L, D]
        self.negative_embeds = encode_prompts(components, [gen.negative_prompt])  # [1, L, D]
        self.group_size = config.synth.group_size
        self.guide = None
        if config.guidance.mode != "none":
            g = config.guidance
            self.guide = TeacherGuide(
                self.teacher,
                partial(decode_latents, components),
                group_size=self.group_size,
                ce_weight=g.ce_weight,
                bn_weight=g.bn_weight,
                adv_weight=g.adv_weight,
                student=student,
            )
        cutmix = config.cutmix
        self.augmentations = (
            [LatentCutMix(cutmix.at, cross_class=cutmix.cross_class)] if cutmix.enabled else []
        )

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """Sample images for ``indices [B]`` (whole mixing groups) with ``targets [B, K]``."""
        from diffdfkd.diffusion.sampler import sample

        groups = check_groups(indices, self.group_size)
        seed = self.config.seed
        classes = targets.argmax(dim=1).to(self.class_embeds.device)
        out = sample(
            self.components,
            cond=self.class_embeds[classes],
            uncond=self.negative_embeds,
            targets=targets,
            generators=generators_for([sample_seed(seed, int(i)) for i in indices]),
            group_generators=generators_for([group_seed(seed, int(g)) for g in groups]),
            latent_size=self.latent_size,
            num_steps=self.config.generator.num_steps,
            cfg_scale=self.config.generator.cfg_scale,
            guidance=self.config.guidance,
            guide=self.guide,
            augmentations=self.augmentations,
            keep_intermediates=self.config.cutmix.keep_intermediates,
        )
        extra = None
        if out.intermediates:
            extra = SynthExtra(
                images=torch.cat([m.images for m in out.intermediates]).cpu(),
                targets=torch.cat([m.targets for m in out.intermediates]).cpu(),
                indices=indices.repeat(len(out.intermediates)),
                steps=torch.tensor([m.step for m in out.intermediates]).repeat_interleave(len(indices)),
            )
        return SynthBatch(images=out.images.cpu(), targets=out.targets.cpu(), extra=extra, logs=out.logs)


@SOURCES.register("diffdfkd")
def diffdfkd_source(config: ExperimentConfig, teacher: torch.nn.Module) -> DiffusionSource:
    """Teacher-guided diffusion with Latent CutMix, as configured (``guidance.mode=none``: plain CFG)."""
    return DiffusionSource(config, teacher)
