"""DiffDFKD's synthetic-data source: teacher-guided latent diffusion with Latent CutMix.

Implements the source interface of ``diffdfkd.synthetic``. Each sample's noise comes from its own
generator seeded by ``runtime.sample_seed(seed, i)``, each mixing group's CutMix randomness from
``runtime.group_seed(seed, g)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from diffdfkd.augment.cutmix import LatentCutMix
from diffdfkd.config import ConfigError, ExperimentConfig, GeneratorSettings
from diffdfkd.diffusion.components import (
    DiffusionComponents,
    decode_latents,
    encode_prompts,
    guidance_decoder_folder,
    load_components,
    load_guidance_decoder,
)
from diffdfkd.diffusion.denoiser import CFGDenoiser
from diffdfkd.diffusion.sampler import sample
from diffdfkd.diffusion.speed import apply_speed_settings
from diffdfkd.guidance.guide import TeacherGuide
from diffdfkd.guidance.modes import build_mode
from diffdfkd.runtime import generators_for, group_seed, sample_seed
from diffdfkd.synthetic import (
    Adversary,
    SynthBatch,
    SyntheticSource,
    SynthExtra,
    check_groups,
    layout_rank,
)


def class_prompts(generator: GeneratorSettings, class_names: Sequence[str]) -> list[str]:
    """One prompt per class and style, class-major (class ``c`` in style ``s`` at ``c * S + s``, ``S`` the
    number of ``generator.prompt_styles``, 1 without): ``generator.prompt_template`` with the class name
    (underscores as spaces) and the style, or the class-free ``generator.prompt`` when the template is empty."""
    template = generator.prompt_template
    if not template:
        return [generator.prompt] * len(class_names)
    styles = generator.prompt_styles or ("",)
    return [template.format(label=n.replace("_", " "), style=s) for n in class_names for s in styles]


def prompt_rows(
    generator: GeneratorSettings,
    indices: torch.Tensor,
    classes: torch.Tensor,
    per_class: int,
    num_classes: int,
) -> torch.Tensor:
    """Which of ``class_prompts`` conditions each sample: its class's prompt in style ``rank % S``, its rank
    among its class's samples (``layout_rank``), so each class takes the styles in turn."""
    styles = max(len(generator.prompt_styles), 1)
    return classes * styles + layout_rank(indices, per_class, num_classes).to(classes.device) % styles


class DiffusionSource(SyntheticSource):
    """DiffDFKD: teacher-guided latent diffusion with Latent CutMix (or plain CFG with mode ``none``).

    Seeds come from ``config.seed`` and the indices only. Prompts are encoded once per class, so a
    sample's conditioning does not depend on its batch. With ``guidance.adv_weight > 0`` the samples
    of the rounds where the ``student`` is active also depend on it as it is when they are made.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        teacher: torch.nn.Module,
        components: DiffusionComponents | None = None,
        student: Adversary | None = None,
    ) -> None:
        """``teacher``: a ``Teacher`` (images in [0, 1] -> logits, ``class_names``); ``components``:
        already loaded parts (else loaded from ``config.generator``); ``student``: the online student,
        for ``L_adv`` (``guidance.adv_weight > 0``) in the rounds where it is ``active``
        (``diffdfkd.synth.online_student``)."""
        gen, g = config.generator, config.guidance
        if g.adv_weight > 0 and student is None:
            raise ConfigError(
                f"guidance.adv_weight={g.adv_weight} needs the online student that `synthesize` trains "
                f"between batches (diffdfkd.synth.online_student); build the source with student="
            )
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
            apply_speed_settings(
                components, self.teacher, channels_last=gen.channels_last, compile=gen.compile
            )
        resolution = gen.resolution or components.native_resolution
        if resolution % components.vae_scale_factor:
            raise ConfigError(
                f"generator.resolution={resolution} is not a multiple of the VAE factor {components.vae_scale_factor}"
            )
        self.latent_size = resolution // components.vae_scale_factor
        self.class_embeds = encode_prompts(components, class_prompts(gen, self.class_names))  # [K S, L, D]
        self.negative_embeds = encode_prompts(components, [gen.negative_prompt])  # [1, L, D]
        self.group_size = config.synth.group_size
        self.guide = self.warmup_guide = None
        self.student = student
        if g.mode != "none":
            folder = guidance_decoder_folder(gen.path, gen.guidance_decoder)
            guidance_vae = None if folder is None else load_guidance_decoder(folder, components)
            guide = partial(
                TeacherGuide,
                self.teacher,
                partial(decode_latents, components, vae=guidance_vae),
                group_size=self.group_size,
                bn_per=g.bn_per,
                ce_weight=g.ce_weight,
                bn_weight=g.bn_weight,
            )
            self.guide = guide(adv_weight=g.adv_weight, student=student)
            self.warmup_guide = guide() if g.adv_weight > 0 else self.guide
        cutmix = config.cutmix
        self.augmentations = (
            [LatentCutMix(cutmix.at, cross_class=cutmix.cross_class)] if cutmix.enabled else []
        )

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """Sample images for ``indices [B]`` (whole mixing groups) with ``targets [B, K]``."""
        groups = check_groups(indices, self.group_size)
        seed = self.config.seed
        classes = targets.argmax(dim=1).to(self.class_embeds.device)
        gen = self.config.generator
        rows = prompt_rows(
            gen, indices, classes, self.config.synth.samples_per_class_in_group, len(self.class_names)
        )
        denoiser = CFGDenoiser(self.components, self.class_embeds[rows], self.negative_embeds, gen.cfg_scale)
        guide = self.guide if self.student is not None and self.student.active else self.warmup_guide
        out = sample(
            self.components,
            build_mode(self.config.guidance, denoiser, guide),
            targets=targets,
            generators=generators_for([sample_seed(seed, int(i)) for i in indices]),
            group_generators=generators_for([group_seed(seed, int(g)) for g in groups]),
            latent_size=self.latent_size,
            num_steps=gen.num_steps,
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
