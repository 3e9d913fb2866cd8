"""The config schema: frozen dataclasses per component, nested in one ``ExperimentConfig``, each
checking its own values (a bad value is a ``ConfigError`` saying what is accepted).

The sections of the baselines and the distillation recipe are in ``config.methods``. The field
comments and docstrings are the config reference: ``docs/config.md`` is generated from
them (``make docs``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffdfkd.config.checks import ConfigError, check_choice, check_positive, check_prompt_template
from diffdfkd.config.methods import BN_UNITS, CMIConfig, DeepInversionConfig, DistillConfig, FastConfig

DTYPES = ("fp32", "bf16", "fp16")
GUIDANCE_MODES = ("none", "full", "detach_unet", "one_pass")
STEP_NORMS = ("none", "sample")
# Samplers whose noise comes from per-sample generators (see diffdfkd.diffusion.components.SCHEDULER_CLASSES).
SCHEDULERS = ("ddpm", "ddim", "euler_ancestral", "euler", "dpmpp_2m")
# Samplers whose step keeps no state, so that guidance.recurrence can redo it.
RECURRENT_SCHEDULERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher classifier. Empty ``arch``/``weights`` mean: the world's shipped teacher.

    ``mean``/``std`` are the teacher's input normalisation of images in [0, 1] (CIFAR teachers:
    (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010) as in the CMI/Fast-Datafree checkpoints); the default is none, as for models trained here.
    """

    # A zoo model (diffdfkd.models.list_models(): CIFAR ResNet-18/34, WRN-16-1/16-2/40-1/40-2, VGG-11-BN,
    # small CNNs; the CMI / Fast-Datafree checkpoints load unchanged), timm:<name> (pip install
    # 'diffdfkd[timm]'), or empty with a TorchScript file.
    arch: str = ""
    # A safetensors or weights-only torch file; with arch "" a torch.export program (.pt2: export with a
    # dynamic batch dimension; torch.export.load may unpickle parts of an archive, so load only files you
    # trust) or a TorchScript file (deprecated; one with BatchNorm layers is converted to an eager graph
    # so that the BN-statistics loss sees them).
    weights: str = ""
    # The teacher's classes in logit order (empty: the world's); eval_folder's sub-folders are matched to them
    # by name.
    class_names: tuple[str, ...] = ()
    # The side the teacher takes: images are resized to it (bicubic, antialiased).
    input_size: int = 32
    # 1 or 3: RGB is averaged to grey, grey copied to RGB, as the teacher needs.
    in_channels: int = 3
    # Input normalisation of [0, 1] images, one value per channel.
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    # (see mean)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    # The teacher was trained on grey images replicated to RGB: image-space methods (DeepInversion,
    # Fast) then optimise ONE channel and save it replicated, instead of colour the teacher never saw.
    grayscale: bool = False

    def __post_init__(self) -> None:
        check_positive("teacher.input_size", self.input_size)
        check_positive("teacher.in_channels", self.in_channels)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ConfigError(
                f"teacher.mean and teacher.std need one value per input channel (teacher.in_channels="
                f"{self.in_channels}), got {len(self.mean)} and {len(self.std)} values; e.g. "
                f"teacher.mean=[{', '.join(['0.5'] * self.in_channels)}] teacher.std=[{', '.join(['0.5'] * self.in_channels)}]"
            )
        for i, value in enumerate(self.std):
            check_positive(f"teacher.std[{i}]", value)
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

    # A local Stable Diffusion 1.x/2.x folder in the diffusers layout (model_index.json, unet/, vae/,
    # text_encoder/, tokenizer/, scheduler/); nothing is downloaded.
    path: str = ""
    # ddpm | ddim | euler_ancestral | euler | dpmpp_2m (each sample's noise from its own generator).
    scheduler: str = "ddpm"
    # Sampling steps (the paper: 50; 70 for DomainNet).
    num_steps: int = 50
    # Classifier-free guidance scale s: eps = eps_u + s (eps_c - eps_u) (the paper: 3 for CIFAR, 7 for
    # DomainNet).
    cfg_scale: float = 3.0
    # The class-free prompt (the paper's figure: the teacher alone carries the class).
    prompt: str = "a realistic photo"
    # A class template such as "a realistic photo of a {label}"; empty means the class-free prompt.
    prompt_template: str = ""
    # Style phrases for a template that also names {style} ("a {style} of a {label}"): each class's
    # samples take them in turn (diffdfkd.synthetic.layout_rank), so every class gets every style.
    prompt_styles: tuple[str, ...] = ()
    # The unconditional prompt of CFG.
    negative_prompt: str = ""
    resolution: int = 0  # 0: the pipeline's native resolution
    # fp32 | bf16 | fp16 (on CPU the weights stay fp32 and bf16 is autocast).
    dtype: str = "fp32"
    # auto (CUDA when available, cuda:$LOCAL_RANK under torchrun) | cpu | cuda | cuda:<n>.
    device: str = "auto"
    # Recompute UNet / VAE-decoder activations in the backward pass of guidance: less memory, ~30% slower.
    gradient_checkpointing: bool = False
    # Speed settings that keep the mathematics (CUDA): NHWC convolutions, torch.compile of the UNet,
    # VAE decoder and teacher (compiled on the first batch).
    channels_last: bool = False
    # (see channels_last)
    compile: bool = False
    # The decoder the guidance gradient goes through: "" the full VAE; "pipeline" the pipeline folder's
    # vae_tiny/ (an AutoencoderTiny, shipped with the digits generators); or an AutoencoderTiny folder
    # (TAESD for SD 1.x: a guided image's FLOPs 0.53x at SD 1.5 scale, BENCHMARKS.md). The saved images
    # are always decoded by the full VAE.
    guidance_decoder: str = ""

    def __post_init__(self) -> None:
        check_choice("generator.scheduler", self.scheduler, SCHEDULERS)
        check_choice("generator.dtype", self.dtype, DTYPES)
        check_positive("generator.num_steps", self.num_steps)
        check_positive("generator.cfg_scale", self.cfg_scale, allow_zero=True)
        check_positive("generator.resolution", self.resolution, allow_zero=True)
        if self.prompt_template or self.prompt_styles:
            check_prompt_template(self.prompt_template, styled=bool(self.prompt_styles))
        if any(not style.strip() for style in self.prompt_styles):
            raise ConfigError(f"generator.prompt_styles={list(self.prompt_styles)} holds an empty phrase")


@dataclass(frozen=True)
class GuidanceConfig:
    """Teacher guidance: ``L = ce * CE + bn * L_bn + adv * L_adv``; by default each guided step moves
    ``z_t -= step_size * sigma_t * grad L / rms(grad L)`` (per image; ``step_norm``).

    ``adv_weight``: the weight of ``L_adv`` against the online student (``online.*``), which also
    weights that term in Fast's and CMI's generator losses (``synth.source=fast`` or ``cmi``).
    ``bn_per``: the units of ``L_bn`` (``group``: one distance per mixing group's pooled statistics;
    ``sample``: one per image, the paper's batch of one, about ``group_size`` times stronger per image at
    the same weight). ``step_norm``: ``none`` steps along the raw gradient (``step_size`` in loss units);
    ``sample`` along each image's gradient scaled to unit RMS, so ``step_size`` is the shift in noise
    standard deviations per guided step, whatever the loss scale, image size or generator
    (``diffdfkd.guidance.modes``).
    """

    # none (plain CFG) | full (the paper: gradient through UNet, decoder and teacher) | detach_unet (no UNet
    # Jacobian) | one_pass (classifier guidance, one UNet pass).
    mode: str = "full"
    # Weight of the cross-entropy to the target class.
    ce_weight: float = 1.0
    # Weight of the BatchNorm-statistics term L_bn (the paper: 0.1, per image).
    bn_weight: float = 0.1
    # group (one distance per mixing group) | sample (one per image: the paper's batch of one, about
    # group_size times stronger per image).
    bn_per: str = "group"
    # Weight of the adversarial term against the online student (online.*); 0 turns it and the student
    # off. Its batches are rounds made in order by one process (shards are refused); a resumed run
    # rebuilds the student from the saved images. With synth.source=fast it weights Fast's own
    # adversarial term; deepinversion and real refuse it.
    adv_weight: float = 0.0
    # The guidance step eta: in noise levels of z_t per guided step with step_norm=sample, in loss units with
    # none (the paper: 1.0, raw).
    step_size: float = 0.1
    # sample (each image's gradient at unit RMS: one step_size means the same for any teacher, loss or
    # generator) | none (the paper's raw step z_t - step_size * grad L).
    step_norm: str = "sample"
    # Guide only on steps whose fraction of the schedule lies in [window_start, window_end).
    window_start: float = 0.0
    # (see window_start)
    window_end: float = 1.0
    # Guide every k-th step only.
    every: int = 1
    # Take each guided step this many times (self-recurrence, Bansal et al. 2023): after the scheduler's
    # step to z_{t-1}, z_t is drawn again from it and the step is redone; k times the cost of each guided
    # step. 1: no recurrence. Needs generator.scheduler ddpm or ddim (a stateless step).
    recurrence: int = 1

    def __post_init__(self) -> None:
        check_choice("guidance.mode", self.mode, GUIDANCE_MODES)
        check_choice("guidance.bn_per", self.bn_per, BN_UNITS)
        check_choice("guidance.step_norm", self.step_norm, STEP_NORMS)
        for name in ("ce_weight", "bn_weight", "adv_weight", "step_size"):
            check_positive(f"guidance.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 <= self.window_start < self.window_end <= 1.0:
            raise ConfigError("guidance window must satisfy 0 <= window_start < window_end <= 1")
        check_positive("guidance.every", self.every)
        check_positive("guidance.recurrence", self.recurrence)
        if self.recurrence > 1 and self.mode == "none":
            raise ConfigError("guidance.recurrence repeats guided steps: mode none has none (set it to 1)")


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
    # Images per KD step, drawn from every image saved so far.
    batch_size: int = 64
    # SGD learning rate (constant).
    lr: float = 0.05
    # KD temperature of the online student.
    temperature: float = 4.0

    def __post_init__(self) -> None:
        check_positive("online.warmup_rounds", self.warmup_rounds, allow_zero=True)
        for name in ("kd_steps", "batch_size", "lr", "temperature"):
            check_positive(f"online.{name}", getattr(self, name))


@dataclass(frozen=True)
class CutMixConfig:
    """Latent CutMix at fractions of the schedule; pairs samples of the same class by default."""

    # Latent CutMix between samples of a mixing group.
    enabled: bool = True
    # Fractions of the schedule at which boxes are mixed (the paper: N/5 .. 4N/5).
    at: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    # Mix across classes with mixed soft targets (default: same-class partners, label unchanged).
    cross_class: bool = False
    # Also save the decoded x0_hat at the CutMix steps (up to 5 images per trajectory).
    keep_intermediates: bool = False

    def __post_init__(self) -> None:
        if any(not 0.0 < f < 1.0 for f in self.at):
            raise ConfigError(f"cutmix.at fractions must lie in (0, 1), got {self.at}")


@dataclass(frozen=True)
class SynthConfig:
    """How many images, in which batches, written where."""

    # diffdfkd (teacher-guided diffusion; guidance.mode=none: unguided) | deepinversion | fast | real (the
    # PRIVATE training images: an upper bound, not data-free).
    source: str = "diffdfkd"
    # Total images: images_per_class * K rounded UP to whole batches (so the last classes may get a few more).
    images_per_class: int = 100
    # Samples per batch: a multiple of group_size.
    batch_size: int = 20
    # Sample i has class (i // samples_per_class_in_group) % K: consecutive samples share a class.
    samples_per_class_in_group: int = 2
    # Mixing groups: consecutive blocks of group_size samples share CutMix partners and BN statistics.
    group_size: int = 20
    # Side of the saved square images; 0: the teacher's input size.
    save_size: int = 0
    # Empty: <out_dir>/synth of the experiment.
    out_dir: str = ""
    # synth.source=real: the world split it serves; private:train (KD on real data, the upper bound) or a
    # PUBLIC split (e.g. public:noto: KD on another style's real images).
    real_split: str = "private:train"

    def __post_init__(self) -> None:
        if not self.real_split.startswith(("private:", "public:")):
            raise ConfigError(
                f"synth.real_split={self.real_split!r} must name a world split: private:<name> or public:<name>"
            )
        for name in ("images_per_class", "batch_size", "samples_per_class_in_group", "group_size"):
            check_positive(f"synth.{name}", getattr(self, name))
        check_positive("synth.save_size", self.save_size, allow_zero=True)
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
class ExperimentConfig:
    """Everything one run needs. ``world`` names the shipped world whose parts fill empty fields."""

    # A shipped world (`diffdfkd world list`: digits, digits-mnist) whose teacher, generator and private test
    # split fill the empty fields; any other name needs its own teacher, generator and eval_folder.
    world: str = "digits"
    # The run seed: every random stream (noise, CutMix, data order, initial weights) derives from it
    # (runtime.STREAMS).
    seed: int = 0
    # The run's folder: synth/, student/, the report, config.yaml and run_info.json.
    out_dir: str = "runs/default"
    # Labelled test images (ImageFolder layout) for the final report, used once; sub-folders are matched
    # to teacher.class_names by name (cat/ or 003_cat/), never by position; empty: the world's PRIVATE
    # test split when the world is a shipped one, else no test evaluation.
    eval_folder: str = ""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    cutmix: CutMixConfig = field(default_factory=CutMixConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    deepinversion: DeepInversionConfig = field(default_factory=DeepInversionConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    cmi: CMIConfig = field(default_factory=CMIConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed={self.seed} must lie in [0, 2**63)")
        if not self.out_dir:
            raise ConfigError("out_dir must name a folder")
        if self.guidance.recurrence > 1 and self.generator.scheduler not in RECURRENT_SCHEDULERS:
            raise ConfigError(
                f"guidance.recurrence > 1 redoes a scheduler step, which {self.generator.scheduler!r} keeps "
                f"state across; use generator.scheduler {' or '.join(RECURRENT_SCHEDULERS)}"
            )


__all__ = [
    "BN_UNITS",
    "DTYPES",
    "GUIDANCE_MODES",
    "SCHEDULERS",
    "STEP_NORMS",
    "ConfigError",
    "CutMixConfig",
    "DeepInversionConfig",
    "DistillConfig",
    "ExperimentConfig",
    "CMIConfig",
    "FastConfig",
    "GeneratorSettings",
    "GuidanceConfig",
    "OnlineConfig",
    "SynthConfig",
    "TeacherConfig",
]
