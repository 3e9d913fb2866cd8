"""The config sections of the methods beside guided synthesis: the DeepInversion and Fast baselines, and
the distillation recipe. Part of the schema (``config.schema.ExperimentConfig`` nests them)."""

from __future__ import annotations

from dataclasses import dataclass

from diffdfkd.config.checks import ConfigError, check_choice, check_positive

BN_UNITS = ("sample", "group")  # guidance.bn_per and deepinversion.bn_per


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

    # Adam iterations per batch (the original: 2k).
    iterations: int = 200
    lr: float = 0.1  # Adam's initial learning rate, decayed to 0 by a cosine over the iterations
    # Weight of the cross-entropy to the target class.
    ce_weight: float = 1.0
    # Weight of L_bn (see bn_per).
    bn_weight: float = 1.0
    # group | sample: the units of L_bn.
    bn_per: str = "group"
    # Multiplier of the first BatchNorm layer's distance.
    first_bn_weight: float = 10.0
    # Weight of the L1 total-variation prior.
    tv_l1_weight: float = 0.0
    # Weight of the L2 total-variation prior.
    tv_l2_weight: float = 1.0
    # Weight of the L2 prior on the image.
    l2_weight: float = 0.01
    # Random shifts of up to this many pixels at every iteration; 0 turns it off.
    jitter: int = 2
    # Random horizontal flips at every iteration; only where the world allows them (never for digits).
    flip: bool = False

    def __post_init__(self) -> None:
        check_positive("deepinversion.iterations", self.iterations)
        check_positive("deepinversion.lr", self.lr)
        check_choice("deepinversion.bn_per", self.bn_per, BN_UNITS)
        for name in ("ce_weight", "bn_weight", "first_bn_weight", "tv_l1_weight", "tv_l2_weight",
                     "l2_weight", "jitter"):  # fmt: skip
            check_positive(f"deepinversion.{name}", getattr(self, name), allow_zero=True)


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
    # The generator's latent size.
    latent_dim: int = 256
    width: int = 64  # the generator's base channel count (ngf)
    lr_generator: float = 2e-3  # inner Adam on the generator copy; the meta step uses lr * steps
    # Adam on the per-sample latents z.
    lr_latent: float = 0.01
    # Weight of the cross-entropy to the target class.
    ce_weight: float = 0.5
    # Published: 10 (batches of 256); at our rounds of 20 it drowns CE (teacher accuracy 0.2).
    bn_weight: float = 1.0
    # Multiplier of the first BatchNorm layer's distance.
    first_bn_weight: float = 1.0
    # Random shifts of up to this many pixels before the teacher (the published random crop with
    # padding 4, here wrapping around as DeepInversion's jitter); 0 turns it off.
    jitter: int = 4
    # Random horizontal flips; only where the world allows them (never for digits).
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "latent_dim", "width", "lr_generator", "lr_latent"):
            check_positive(f"fast.{name}", getattr(self, name))
        for name in ("warmup_rounds", "ce_weight", "bn_weight", "first_bn_weight", "jitter"):
            check_positive(f"fast.{name}", getattr(self, name), allow_zero=True)


@dataclass(frozen=True)
class CMIConfig:
    """The CMI baseline source (Fang et al., IJCAI 2021, "Contrastive Model Inversion for Data-Free
    Knowledge Distillation"; ``synth.source=cmi``). Per batch a freshly initialised generator and
    per-sample latents are optimised for ``iterations`` Adam steps on::

        ce * CE + bn * L_bn + guidance.adv_weight * L_adv + contrastive * L_cr

    CE, BN statistics and ``L_adv`` (against the online student) per batch, and ``L_cr`` CMI's
    instance discrimination: a projection head over the teacher's per-image feature means at its
    BatchNorm inputs tells each image's local view (a random resized crop) from the global views of the
    batch and of ``negatives`` earlier images held in a memory bank. The head and the bank carry over
    from batch to batch. See ``diffdfkd.baselines.cmi``.
    """

    # Adam steps per batch. The published CIFAR scripts run 200 at lr 1e-3; 50 here, for cost (2.6 s
    # per digits image on one thread of the shared 2-core CPU; benchmarks/results/tuning/cmi.md).
    iterations: int = 50
    # Adam's learning rate for the generator, the latents and the projection head.
    lr: float = 1e-3
    latent_dim: int = 256
    # The generator's base channel count (ngf; the same DCGAN generator as Fast's).
    width: int = 64
    # The weights of the inversion terms (published: CE 0.5, BN 1).
    ce_weight: float = 0.5
    bn_weight: float = 1.0
    # The weight of the contrastive term L_cr (published: 0.8) and its softmax temperature (0.1).
    contrastive_weight: float = 0.8
    temperature: float = 0.1
    # Output size of the projection head (an MLP on the teacher's features, L2-normalised).
    head_dim: int = 128
    # Earlier images whose teacher features the memory bank keeps (the oldest dropped first) ...
    bank_size: int = 4096
    # ... and how many of them each step draws as negatives (published: 4096 of 40960 for 50k images).
    negatives: int = 256
    # The local view: a random resized crop covering this fraction of the image area or more.
    local_scale: float = 0.25
    # The global view: random shifts of up to this many pixels (the published crop with padding 4).
    jitter: int = 4
    # Random horizontal flips of both views; only where the world allows them (never for digits).
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "lr", "latent_dim", "width", "temperature", "head_dim", "bank_size"):
            check_positive(f"cmi.{name}", getattr(self, name))
        for name in ("ce_weight", "bn_weight", "contrastive_weight", "negatives", "jitter"):
            check_positive(f"cmi.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 < self.local_scale <= 1.0:
            raise ConfigError(f"cmi.local_scale={self.local_scale} must lie in (0, 1]")


@dataclass(frozen=True)
class DistillConfig:
    """Stage 2 training recipe: KD of a student on the fixed synthetic set (also used, without a
    teacher, to train a teacher with cross-entropy on real data). See ``diffdfkd.distill.fit``.
    """

    # A zoo model (diffdfkd.models.list_models()).
    student: str = "lenet5"
    # False: cross-entropy on the dataset's labels without the teacher (the from-scratch baseline).
    kd: bool = True
    # Training epochs (the reported student is the last one's).
    epochs: int = 60
    # The global batch: under torchrun each of the W processes takes batch_size / W of it.
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (momentum, no nesterov) or adamw
    # The base learning rate.
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    # Weight decay (sgd: L2; adamw: decoupled).
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine to 0, or multistep
    # multistep: multiply the lr by lr_decay at these fractions of the epochs (0.625 of 240 = 150).
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
    # multistep: the factor at each milestone.
    lr_decay: float = 0.1
    warmup_epochs: int = 0  # linear warmup from 0, per step, before the schedule
    temperature: float = 4.0  # KD: T^2 * KL(softmax(t/T) || softmax(s/T))
    ce_weight: float = 0.0  # KD: + ce_weight * CE(student, labels)
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights; evaluate and save the EMA weights
    # A held-out slice of the SYNTHETIC set, for monitoring agreement with the teacher (never the test split).
    holdout_fraction: float = 0.1
    crop_padding: int = 4  # random crop with this padding; 0 turns it off
    crop_fill: float = 0.0  # the padding's value in [0, 1]: 0 black (digits), 1 white (emoji)
    hflip: bool = False  # random horizontal flip; never for digits
    color_jitter: float = 0.0  # brightness, contrast and saturation scaled by 1 +- this; 0 turns it off
    amp: bool = True  # bf16 autocast, on CUDA only

    def __post_init__(self) -> None:
        check_choice("distill.optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("distill.schedule", self.schedule, ("cosine", "multistep"))
        check_positive("distill.epochs", self.epochs)
        check_positive("distill.batch_size", self.batch_size)
        check_positive("distill.lr", self.lr)
        check_positive("distill.temperature", self.temperature)
        for name in ("weight_decay", "ce_weight", "crop_padding", "warmup_epochs", "color_jitter"):
            check_positive(f"distill.{name}", getattr(self, name), allow_zero=True)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("distill.momentum must lie in [0, 1)")
        if not 0.0 <= self.crop_fill <= 1.0:
            raise ConfigError(f"distill.crop_fill={self.crop_fill} must lie in [0, 1]")
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
