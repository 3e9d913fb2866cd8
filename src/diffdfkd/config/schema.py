"""The config schema: frozen dataclasses per component, nested in one ``ExperimentConfig``, each
checking its own values (a bad value is a ``ConfigError`` saying what is accepted).

The field comments and docstrings here are the config reference: ``docs/config.md`` is generated from
them (``make docs``)."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field

from diffdfkd.errors import UserError

DTYPES = ("fp32", "bf16", "fp16")
GUIDANCE_MODES = ("none", "full", "detach_unet", "one_pass")
BN_UNITS = ("sample", "group")  # guidance.bn_per and deepinversion.bn_per
STEP_NORMS = ("none", "sample")
# Samplers whose noise comes from per-sample generators (see diffdfkd.diffusion.components.SCHEDULER_CLASSES).
SCHEDULERS = ("ddpm", "ddim", "euler_ancestral", "euler", "dpmpp_2m")


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used, with a message saying what was wrong."""


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose from {', '.join(choices)}")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        finite = "a finite number " if isinstance(value, float) else ""
        raise ConfigError(f"{name}={value!r} must be {finite}{'>= 0' if allow_zero else '> 0'}")


def _check_prompt_template(template: str) -> None:
    """A class template names ``{label}`` and no other placeholder (``{{``/``}}`` are literal braces)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ConfigError(
            f"generator.prompt_template={template!r} is not a valid template: {error}"
        ) from None
    if fields != {"label"}:
        unknown = sorted(fields - {"label"})
        raise ConfigError(
            f"generator.prompt_template={template!r} "
            + (f"has unknown placeholders {unknown}" if unknown else "must contain '{label}'")
            + "; the only placeholder is {label} (the class name), e.g. 'a photo of a {label}'"
        )


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher classifier. Empty ``arch``/``weights`` mean: the world's shipped teacher.

    ``mean``/``std`` are the teacher's input normalisation of images in [0, 1] (CIFAR teachers:
    (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010) as in the CMI/Fast-Datafree checkpoints); the default is none, as for models trained here.
    """

    arch: str = ""
    weights: str = ""
    class_names: tuple[str, ...] = ()
    input_size: int = 32
    in_channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    # The teacher was trained on grey images replicated to RGB: image-space methods (DeepInversion,
    # Fast) then optimise ONE channel and save it replicated, instead of colour the teacher never saw.
    grayscale: bool = False

    def __post_init__(self) -> None:
        _check_positive("teacher.input_size", self.input_size)
        _check_positive("teacher.in_channels", self.in_channels)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ConfigError(
                f"teacher.mean and teacher.std need one value per input channel (teacher.in_channels="
                f"{self.in_channels}), got {len(self.mean)} and {len(self.std)} values; e.g. "
                f"teacher.mean=[{', '.join(['0.5'] * self.in_channels)}] teacher.std=[{', '.join(['0.5'] * self.in_channels)}]"
            )
        for i, value in enumerate(self.std):
            _check_positive(f"teacher.std[{i}]", value)
        if self.class_names:
            if len(self.class_names) < 2:
                raise ConfigError(
                    f"teacher.class_names={list(self.class_names)}: a classifier needs at least two classes"
                )
            repeated = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            if repeated or not all(n.strip() for n in self.class_names):
                raise ConfigError(
                    f"teacher.class_names must be distinct, non-empty names; repeated: {repeated}"
                )


@dataclass(frozen=True)
class GeneratorSettings:
    """The latent diffusion model and its sampler. Empty ``path``: the world's shipped generator."""

    path: str = ""
    scheduler: str = "ddpm"
    num_steps: int = 50
    cfg_scale: float = 3.0
    prompt: str = "a realistic photo"
    # A class template such as "a realistic photo of a {label}"; empty means the class-free prompt.
    prompt_template: str = ""
    negative_prompt: str = ""
    resolution: int = 0  # 0: the pipeline's native resolution
    dtype: str = "fp32"
    device: str = "auto"
    # Recompute UNet / VAE-decoder activations in the backward pass of guidance: less memory, ~30% slower.
    gradient_checkpointing: bool = False
    # Speed settings that keep the mathematics (CUDA): NHWC convolutions, torch.compile of the UNet,
    # VAE decoder and teacher (compiled on the first batch).
    channels_last: bool = False
    compile: bool = False
    # The decoder the guidance gradient goes through: "" the full VAE; "pipeline" the pipeline folder's
    # vae_tiny/ (an AutoencoderTiny, shipped with the digits generators); or an AutoencoderTiny folder.
    # The saved images are always decoded by the full VAE.
    guidance_decoder: str = ""

    def __post_init__(self) -> None:
        _check_choice("generator.scheduler", self.scheduler, SCHEDULERS)
        _check_choice("generator.dtype", self.dtype, DTYPES)
        _check_positive("generator.num_steps", self.num_steps)
        _check_positive("generator.cfg_scale", self.cfg_scale, allow_zero=True)
        _check_positive("generator.resolution", self.resolution, allow_zero=True)
        if self.prompt_template:
            _check_prompt_template(self.prompt_template)


@dataclass(frozen=True)
class GuidanceConfig:
    """Teacher guidance: ``L = ce * CE + bn * L_bn + adv * L_adv``; by default each guided step moves
    ``z_t -= step_size * sigma_t * grad L / rms(grad L)`` (per image; ``step_norm``).

    ``adv_weight``: the weight of ``L_adv`` against the online student (``online.*``), which also
    weights that term in Fast's generator loss (``synth.source=fast``).
    ``bn_per``: the units of ``L_bn`` (``group``: one distance per mixing group's pooled statistics;
    ``sample``: one per image, the paper's batch of one, about ``group_size`` times stronger per image at
    the same weight). ``step_norm``: ``none`` steps along the raw gradient (``step_size`` in loss units);
    ``sample`` along each image's gradient scaled to unit RMS, so ``step_size`` is the shift in noise
    standard deviations per guided step, whatever the loss scale, image size or generator
    (``diffdfkd.guidance.modes``).
    """

    mode: str = "full"
    ce_weight: float = 1.0
    bn_weight: float = 0.1
    bn_per: str = "group"
    adv_weight: float = 0.0
    step_size: float = 0.1
    step_norm: str = "sample"
    # Guide only on steps whose fraction of the schedule lies in [window_start, window_end).
    window_start: float = 0.0
    window_end: float = 1.0
    every: int = 1

    def __post_init__(self) -> None:
        _check_choice("guidance.mode", self.mode, GUIDANCE_MODES)
        _check_choice("guidance.bn_per", self.bn_per, BN_UNITS)
        _check_choice("guidance.step_norm", self.step_norm, STEP_NORMS)
        for name in ("ce_weight", "bn_weight", "adv_weight", "step_size"):
            _check_positive(f"guidance.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 <= self.window_start < self.window_end <= 1.0:
            raise ConfigError("guidance window must satisfy 0 <= window_start < window_end <= 1")
        _check_positive("guidance.every", self.every)


@dataclass(frozen=True)
class OnlineConfig:
    """The student trained online during synthesis, which the adversarial term ``L_adv`` of the
    guidance measures disagreement against (CMI / Fast-Datafree; used only when
    ``guidance.adv_weight > 0``, and then part of the dataset's signature; see
    ``diffdfkd.synth.online_student``). Each written batch is a round: the student then takes
    ``kd_steps`` KD steps (``T^2 KL`` at ``temperature``; SGD, momentum 0.9, weight decay 5e-4,
    constant ``lr``) on ``batch_size`` images drawn from every image saved so far, with the teacher's
    logits on the saved images as targets. ``L_adv`` is on from round ``warmup_rounds``.
    """

    # A zoo model (diffdfkd.models.list_models()); empty: distill.student, as in CMI / Fast.
    student: str = ""
    # Rounds (batches) made without L_adv while the student learns: Fast's 20 warm-up epochs of 220
    # scaled to a 1,000-image digits run (50 batches of 20); there the student already agrees with the
    # teacher on 80-95 % of a new batch after 3 rounds.
    warmup_rounds: int = 5
    # 20 steps of 64 images: about 0.3 s per round on one CPU thread (lenet5), 4 % of a guided digits batch.
    kd_steps: int = 20
    batch_size: int = 64
    lr: float = 0.05
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _check_positive("online.warmup_rounds", self.warmup_rounds, allow_zero=True)
        for name in ("kd_steps", "batch_size", "lr", "temperature"):
            _check_positive(f"online.{name}", getattr(self, name))


@dataclass(frozen=True)
class CutMixConfig:
    """Latent CutMix at fractions of the schedule; pairs samples of the same class by default."""

    enabled: bool = True
    at: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    cross_class: bool = False
    keep_intermediates: bool = False

    def __post_init__(self) -> None:
        if any(not 0.0 < f < 1.0 for f in self.at):
            raise ConfigError(f"cutmix.at fractions must lie in (0, 1), got {self.at}")


@dataclass(frozen=True)
class SynthConfig:
    """How many images, in which batches, written where."""

    source: str = "diffdfkd"
    # Total images: images_per_class * K rounded UP to whole batches (so the last classes may get a few more).
    images_per_class: int = 100
    batch_size: int = 20
    # Sample i has class (i // samples_per_class_in_group) % K: consecutive samples share a class.
    samples_per_class_in_group: int = 2
    # Mixing groups: consecutive blocks of group_size samples share CutMix partners and BN statistics.
    group_size: int = 20
    # Side of the saved square images; 0: the teacher's input size.
    save_size: int = 0
    # Empty: <out_dir>/synth of the experiment.
    out_dir: str = ""

    def __post_init__(self) -> None:
        for name in ("images_per_class", "batch_size", "samples_per_class_in_group", "group_size"):
            _check_positive(f"synth.{name}", getattr(self, name))
        _check_positive("synth.save_size", self.save_size, allow_zero=True)
        if self.group_size % self.samples_per_class_in_group:
            raise ConfigError(
                f"synth.group_size={self.group_size} must be a multiple of "
                f"synth.samples_per_class_in_group={self.samples_per_class_in_group}"
            )
        if self.batch_size % self.group_size:
            raise ConfigError(
                f"synth.batch_size={self.batch_size} must be a multiple of synth.group_size={self.group_size}"
            )


@dataclass(frozen=True)
class DeepInversionConfig:
    """The DeepInversion baseline source (Yin et al. 2020; ``synth.source=deepinversion``) by its
    published recipe: images initialised N(0, 1) in the teacher's normalised space, optimised with Adam
    under a cosine-decaying learning rate on a freshly jittered (and, where allowed, flipped) view::

        L = ce * CE + bn * L_bn + tv_l1 * TV_1 + tv_l2 * TV_2 + l2 * L2

    every term per sample and summed over the batch, each weight a pull per image (``bn_per=group``:
    ``L_bn`` on each mixing group's pooled statistics, each image charged its group's distance;
    ``sample``: each image's own statistics), the first BatchNorm layer's distance multiplied by
    ``first_bn_weight``. See ``diffdfkd.baselines.deepinversion``. The original runs 2k
    iterations per batch; the default here was chosen on the BN-statistics distance and cost
    (``benchmarks/results/tuning/deepinversion.md``).
    """

    iterations: int = 200
    lr: float = 0.1  # Adam's initial learning rate, decayed to 0 by a cosine over the iterations
    ce_weight: float = 1.0
    bn_weight: float = 1.0
    bn_per: str = "group"
    first_bn_weight: float = 10.0
    tv_l1_weight: float = 0.0
    tv_l2_weight: float = 1.0
    l2_weight: float = 0.01
    # Random shifts of up to this many pixels at every iteration; 0 turns it off.
    jitter: int = 2
    # Random horizontal flips at every iteration; only where the world allows them (never for digits).
    flip: bool = False

    def __post_init__(self) -> None:
        _check_positive("deepinversion.iterations", self.iterations)
        _check_positive("deepinversion.lr", self.lr)
        _check_choice("deepinversion.bn_per", self.bn_per, BN_UNITS)
        for name in ("ce_weight", "bn_weight", "first_bn_weight", "tv_l1_weight", "tv_l2_weight",
                     "l2_weight", "jitter"):  # fmt: skip
            _check_positive(f"deepinversion.{name}", getattr(self, name), allow_zero=True)


@dataclass(frozen=True)
class FastConfig:
    """The Fast baseline source (Fang et al., AAAI 2022, "Up to 100x Faster Data-free Knowledge
    Distillation"; ``synth.source=fast``): one small generator meta-learned across synthesis rounds.
    Each batch is a round: a copy of the meta-generator and per-sample latents ``z`` are optimised for
    ``steps`` Adam steps on ``ce * CE + bn * L_bn`` (BN statistics of the round's batch, with the
    first layer's distance multiplied by ``first_bn_weight``), and the copy's gradients update the
    meta-generator (first-order MAML). See ``diffdfkd.baselines.fast``.
    """

    # Inner steps per round (the paper's Fast-2 / Fast-5 / Fast-10).
    steps: int = 10
    # Meta-training rounds before the first kept round; their images are not written (cost counted).
    # 20 as the published warm-up; chosen with bn_weight on the BN-statistics distance
    # (benchmarks/results/tuning/fast.md).
    warmup_rounds: int = 20
    latent_dim: int = 256
    width: int = 64  # the generator's base channel count (ngf)
    lr_generator: float = 2e-3  # inner Adam on the generator copy; the meta step uses lr * steps
    lr_latent: float = 0.01
    ce_weight: float = 0.5
    # Published: 10 (batches of 256); at our rounds of 20 it drowns CE (teacher accuracy 0.2).
    bn_weight: float = 1.0
    first_bn_weight: float = 1.0
    # Random shifts of up to this many pixels before the teacher (the published random crop with
    # padding 4, here wrapping around as DeepInversion's jitter); 0 turns it off.
    jitter: int = 4
    # Random horizontal flips; only where the world allows them (never for digits).
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "latent_dim", "width", "lr_generator", "lr_latent"):
            _check_positive(f"fast.{name}", getattr(self, name))
        for name in ("warmup_rounds", "ce_weight", "bn_weight", "first_bn_weight", "jitter"):
            _check_positive(f"fast.{name}", getattr(self, name), allow_zero=True)


@dataclass(frozen=True)
class DistillConfig:
    """Stage 2 training recipe: KD of a student on the fixed synthetic set (also used, without a
    teacher, to train a teacher with cross-entropy on real data). See ``diffdfkd.distill.fit``.
    """

    student: str = "lenet5"
    # False: cross-entropy on the dataset's labels without the teacher (the from-scratch baseline).
    kd: bool = True
    epochs: int = 60
    # The global batch: under torchrun each of the W processes takes batch_size / W of it.
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (momentum, no nesterov) or adamw
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine to 0, or multistep
    # multistep: multiply the lr by lr_decay at these fractions of the epochs (0.625 of 240 = 150).
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
    lr_decay: float = 0.1
    warmup_epochs: int = 0  # linear warmup from 0, per step, before the schedule
    temperature: float = 4.0  # KD: T^2 * KL(softmax(t/T) || softmax(s/T))
    ce_weight: float = 0.0  # KD: + ce_weight * CE(student, labels)
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights; evaluate and save the EMA weights
    holdout_fraction: float = 0.1
    crop_padding: int = 4  # random crop with this zero padding; 0 turns it off
    hflip: bool = False  # random horizontal flip; never for digits
    amp: bool = True  # bf16 autocast, on CUDA only

    def __post_init__(self) -> None:
        _check_choice("distill.optimizer", self.optimizer, ("sgd", "adamw"))
        _check_choice("distill.schedule", self.schedule, ("cosine", "multistep"))
        _check_positive("distill.epochs", self.epochs)
        _check_positive("distill.batch_size", self.batch_size)
        _check_positive("distill.lr", self.lr)
        _check_positive("distill.temperature", self.temperature)
        for name in ("weight_decay", "ce_weight", "crop_padding", "warmup_epochs"):
            _check_positive(f"distill.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("distill.momentum must lie in [0, 1)")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"distill.warmup_epochs={self.warmup_epochs} must be < epochs={self.epochs}")
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(
            set(self.milestones)
        ):
            raise ConfigError(
                f"distill.milestones must be increasing fractions of the epochs in (0, 1), got {self.milestones}"
            )
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError("distill.lr_decay must lie in (0, 1]")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError("distill.holdout_fraction must lie in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("distill.ema_decay must lie in [0, 1)")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs. ``world`` names the shipped world whose parts fill empty fields."""

    world: str = "digits"
    seed: int = 0
    out_dir: str = "runs/default"
    # Labelled test images (ImageFolder layout) for the final report; empty: the world's PRIVATE test
    # split when the world is a shipped one, else no test evaluation.
    eval_folder: str = ""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    cutmix: CutMixConfig = field(default_factory=CutMixConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    deepinversion: DeepInversionConfig = field(default_factory=DeepInversionConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed={self.seed} must lie in [0, 2**63)")
        if not self.out_dir:
            raise ConfigError("out_dir must name a folder")
