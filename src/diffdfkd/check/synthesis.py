"""The checks of synthesis: the source, the generator folder and its scheduler, the teacher's BatchNorm
layers, the dataset folder's state and the plan."""

from __future__ import annotations

import json
from pathlib import Path

from diffdfkd.check.distillation import check_student
from diffdfkd.check.folders import check_writable
from diffdfkd.config import ConfigError, ExperimentConfig
from diffdfkd.diffusion.components import (
    build_scheduler,
    check_guidance_decoder,
    check_prompt_lengths,
    check_weight_files,
    guidance_decoder_folder,
    load_tokenizer,
    read_pipeline_index,
)
from diffdfkd.experiment import Experiment
from diffdfkd.guidance.modes import guided_steps
from diffdfkd.guidance.teacher_loss import NoBatchNormError, batchnorm_layers
from diffdfkd.models.teacher import Teacher
from diffdfkd.runtime import resolve_device
from diffdfkd.synth.diffusion_source import class_prompts
from diffdfkd.synth.online_student import check_online, online_arch
from diffdfkd.synth.run import SynthPlan, dataset_signature
from diffdfkd.synth.sources import SOURCES
from diffdfkd.synth.writer import DatasetWriter, missing_batches

# Sources that sample the configured diffusion model (the others need no generator folder).
GENERATOR_SOURCES = ("diffdfkd",)


def check_synthesis(experiment: Experiment, overwrite: bool) -> list[str]:
    """The source, the generator folder and its scheduler, the dataset folder's state, the plan."""
    config, teacher = experiment.config, experiment.teacher
    SOURCES.get(config.synth.source)  # an unknown name lists the known ones
    check_online(config)
    plan = SynthPlan.from_config(config, teacher.num_classes)
    lines = []
    if config.synth.source in GENERATOR_SOURCES:
        lines += check_generator(experiment)
    _check_batchnorm(config, teacher)
    if config.synth.source in ("fast", "cmi") and teacher.input_size % 4:
        raise ConfigError(
            f"synth.source={config.synth.source} makes images whose side is a multiple of 4; the teacher takes {teacher.input_size}"
        )
    save_size = config.synth.save_size or teacher.input_size
    out = experiment.synth_dir
    writer = DatasetWriter(out, teacher.class_names)
    state = writer.state(dataset_signature(config, plan, teacher.class_names, save_size), overwrite=overwrite)
    check_writable(out, "synth.out_dir" if config.synth.out_dir else "out_dir")
    if state == "same":
        done = plan.num_batches - len(missing_batches(out))
        state = (
            f"this config's dataset, {done} of {plan.num_batches} batches done (resumes; files are verified)"
        )
    elif state == "replace":
        state = "another config's dataset: " + (
            "--overwrite deletes it" if overwrite else "no batch of it was finished, so it is replaced"
        )
    lines.append(f"dataset folder {out}: {state}")
    lines.append(
        f"plan: {plan.total} images in {plan.num_batches} batches of {plan.batch_size}, "
        f"{save_size} x {save_size} px, source {config.synth.source}"
        + (f", {_unet_calls(config, plan)}" if config.synth.source in GENERATOR_SOURCES else "")
    )
    if config.guidance.adv_weight > 0:
        o = config.online
        online_key = "online.student" if o.student else "distill.student (the online student)"
        lines.append(
            check_student(online_arch(config), online_key, teacher.num_classes, save_size)
            + f" (online, for L_adv from round {o.warmup_rounds} of {plan.num_batches}; {o.kd_steps} "
            f"KD steps of {o.batch_size} images per round; one process)"
        )
    return lines


def check_generator(experiment: Experiment) -> list[str]:
    """The pipeline folder has every part, each weights file is whole (its header covers it), the
    device exists, the scheduler takes ``num_steps``, the resolution is a whole number of latent
    pixels, every prompt fits the tokenizer's window."""
    gen = experiment.generator_config().generator
    class_names = experiment.teacher.class_names
    index = read_pipeline_index(gen.path)
    for part in ("unet", "vae", "text_encoder"):
        check_weight_files(Path(gen.path) / part)
    tokenizer = load_tokenizer(gen.path, index)
    key = "generator.prompt_template" if gen.prompt_template else "generator.prompt"
    check_prompt_lengths(tokenizer, class_prompts(gen, class_names), f"prompt of {key}")
    check_prompt_lengths(tokenizer, [gen.negative_prompt], "generator.negative_prompt")
    resolve_device(gen.device)
    scheduler, _ = build_scheduler(gen.path, gen.scheduler)
    train_steps = scheduler.config.num_train_timesteps
    try:
        scheduler.set_timesteps(gen.num_steps)
    except ValueError as error:
        raise ConfigError(
            f"generator.num_steps={gen.num_steps} does not fit the {gen.scheduler} scheduler of {gen.path} "
            f"({train_steps} training steps): {error}"
        ) from None
    vae = json.loads((Path(gen.path) / "vae" / "config.json").read_text())
    unet = json.loads((Path(gen.path) / "unet" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)  # as DiffusionComponents.vae_scale_factor
    resolution = gen.resolution or int(unet["sample_size"]) * factor
    if resolution % factor:
        raise ConfigError(f"generator.resolution={resolution} is not a multiple of the VAE factor {factor}")
    decoder = guidance_decoder_folder(gen.path, gen.guidance_decoder)
    if decoder is not None:
        check_guidance_decoder(decoder, int(unet["in_channels"]), factor)
        check_weight_files(decoder)
    return [
        f"generator: {gen.path} ({gen.scheduler}, {gen.num_steps} of {train_steps} steps, "
        f"{resolution} x {resolution} px" + (f"; guidance decoder {decoder})" if decoder is not None else ")")
    ]


def _check_batchnorm(config: ExperimentConfig, teacher: Teacher) -> None:
    """A BN-statistics loss with a weight needs BatchNorm layers it can hook in the teacher."""
    guided = config.synth.source in GENERATOR_SOURCES and config.guidance.mode != "none"
    key, weight = ("guidance.bn_weight", config.guidance.bn_weight)
    if config.synth.source in ("deepinversion", "fast", "cmi"):  # image-space baselines: their own BN weight
        name = config.synth.source
        guided, key, weight = True, f"{name}.bn_weight", getattr(config, name).bn_weight
    if not guided or weight == 0:
        return
    try:
        batchnorm_layers(teacher.network)
    except NoBatchNormError as error:
        raise ConfigError(
            f"{key}={weight}, but the BN-statistics loss cannot run on this teacher: {error}. Ways out: "
            f"{key}=0 (no BN-statistics term), or a teacher whose BatchNorm layers it reaches (a zoo "
            f"architecture with its weights: teacher.arch + teacher.weights)"
        ) from None


def _unet_calls(config: ExperimentConfig, plan: SynthPlan) -> str:
    """The estimated number of CFG-batched UNet calls (and backward passes) of the whole dataset."""
    steps = config.generator.num_steps
    mode = config.guidance.mode
    guided = guided_steps(config.guidance, steps)
    takes = guided * config.guidance.recurrence  # each guided step is taken `recurrence` times
    per_batch = steps - guided + takes * (2 if mode in ("full", "detach_unet") else 1)
    backward = takes if mode in ("full", "one_pass") else 0
    recurrence = f", each {config.guidance.recurrence} times" if config.guidance.recurrence > 1 else ""
    return (
        f"{steps} sampling steps ({guided} guided{recurrence}, mode {mode}): about "
        f"{per_batch * plan.num_batches} UNet calls and {backward * plan.num_batches} UNet backward passes"
    )
