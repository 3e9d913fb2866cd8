"""Fast (Fang et al., AAAI 2022, "Up to 100x Faster Data-free Knowledge Distillation") as a source:
``synth.source=fast``.

One small generator ``G_theta: z [B, d] -> x [B, C, S, S]`` in [0, 1] (``C = 1`` when
``teacher.grayscale``) is meta-learned across synthesis ROUNDS; each batch of the dataset is one round.
In round ``r`` with targets ``y``:

1. a copy ``G_phi`` of the meta-generator (``phi <- theta``) and latents ``z ~ N(0, I)`` (per sample,
   seeded by the sample index) are optimised jointly for ``steps`` Adam steps on::

       L(phi, z) = w_ce CE(T(u), y) + w_bn L_bn(u) [+ w_adv L_adv(T(u), S(u))],    u = jitter(G_phi(z))

   with CE averaged over the round's batch and ``L_bn`` the BN-statistics distance of the batch's
   pooled statistics (first layer multiplied by ``first_bn_weight``): both taken PER BATCH, as the
   published method does, since a round is a batch and the generator is shared by its samples
   (:mod:`diffdfkd.guidance.teacher_loss` decides the units). ``L_adv`` (``guidance.adv_weight > 0``,
   averaged over the batch): Fast's adversarial term against the student trained online between
   rounds (:mod:`diffdfkd.synth.online_student`, the same student and term as DiffDFKD's), in the
   written rounds where that student is ``active`` (from round ``online.warmup_rounds``);
2. the round's images are those of the lowest ``L`` seen during the inner steps;
3. meta step (first-order MAML): ``theta <- Adam(theta, sum_steps grad_phi L)`` with learning rate
   ``lr_generator * steps``.

So round ``r``'s start is what the earlier rounds taught the generator: after a few rounds a handful
of steps suffices, which is Fast's speed-up over DeepInversion's thousands of steps per batch.

Left out: the BN-statistics momentum across rounds and the generator's reset late in training. Here
the rounds write a fixed dataset, distilled afterwards with the same KD recipe as every other source.

Determinism and resume: a round depends on every earlier round. The source keeps the meta-generator in
memory and knows how many rounds it has done; asked for batch ``b`` it first replays (and discards)
the rounds it lacks, so a resumed or sharded run gives the same images as one uninterrupted run,
at the cost of redoing the earlier rounds. ``warmup_rounds`` meta-train before batch 0 and are not
written; their latents come from their own seed stream. With ``L_adv`` a round also depends on the
online student as it was then: the synthesis rounds (:mod:`diffdfkd.synth.rounds`) replay each
written round (``replay``) in step with the student they rebuild, so a resumed run still ends
byte-identical; asked for a later round before the earlier written ones, the source refuses.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffdfkd.baselines.deepinversion import image_channels, jitter_view, to_rgb
from diffdfkd.config import ConfigError, ExperimentConfig, FastConfig
from diffdfkd.guidance.teacher_loss import BNStatistics, Units, adversarial, cross_entropy
from diffdfkd.runtime import generators_for, sample_seed, stream_seed
from diffdfkd.synthetic import Adversary, SynthBatch, SyntheticSource, layout_targets, require_adversary

# Random streams of the meta-generator's initial weights and of the warm-up rounds' samples
# (0, 1, 2 are the samples', the groups' and the real source's order).
INNER_BETAS = META_BETAS = (0.5, 0.999)


class FastGenerator(nn.Module):
    """A DCGAN-style generator ``z [B, d] -> images [B, C, S, S]`` in [0, 1].

    A linear map to ``2w`` channels at ``S/4``, then twice (upsample x2, 3x3 conv, BatchNorm,
    LeakyReLU 0.2) to ``2w`` and ``w`` channels, a 3x3 conv to ``C`` channels and a sigmoid.
    """

    def __init__(self, latent_dim: int, width: int, size: int, channels: int) -> None:
        super().__init__()
        if size % 4:
            raise ConfigError(f"the Fast generator makes images whose side is a multiple of 4, not {size}")
        self.start = size // 4
        self.project = nn.Linear(latent_dim, 2 * width * self.start**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z)
        return self.body(x.view(len(z), -1, self.start, self.start))


class FastSource(SyntheticSource):
    """The Fast baseline: a meta-learned generator, one round per batch (module docstring).

    ``teacher``: a ``Teacher`` (images in [0, 1] -> logits; ``input_size``, ``mean``/``std`` and the
    inner ``model`` whose BatchNorm layers ``L_bn`` hooks). ``student``: the online student, for
    ``L_adv`` (``guidance.adv_weight > 0``; the one the synthesis rounds train).
    """

    builds_on_earlier_rounds = True  # the meta-generator carries over

    def __init__(
        self,
        config: ExperimentConfig,
        teacher: torch.nn.Module,
        student: Adversary | None = None,
    ) -> None:
        require_adversary(config, student)
        self.options: FastConfig = config.fast
        self.student = student
        self.adv_weight = config.guidance.adv_weight
        self.teacher = teacher
        self.seed = config.seed
        self.per_class = config.synth.samples_per_class_in_group
        self.device = next(iter(teacher.state_dict().values())).device
        channels = image_channels(teacher, config.teacher.grayscale)[0].shape[1]
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed("fast_generator", self.seed))
            generator = FastGenerator(o.latent_dim, o.width, teacher.input_size, channels)
        self.generator = generator.to(self.device).train()
        self.meta_optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=o.lr_generator * o.steps, betas=META_BETAS
        )
        self.rounds = 0  # rounds done, warm-up included

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """The round of batch ``indices [B]`` (consecutive, starting at a multiple of ``B``) with
        ``targets [B, K]``, after replaying the earlier rounds this source has not done yet."""
        batch = len(indices)
        if (
            not torch.equal(indices, torch.arange(int(indices[0]), int(indices[0]) + batch))
            or int(indices[0]) % batch
        ):
            raise ValueError("Fast takes whole batches of consecutive indices (one round per batch)")
        number = self.options.warmup_rounds + int(indices[0]) // batch
        if self.rounds > number:
            raise ValueError(
                f"Fast makes its rounds in order: round {number} asked after round {self.rounds - 1}"
            )
        num_classes = targets.shape[1]
        while self.rounds < number:  # warm-up rounds, then rounds of batches written before a resume
            first = (self.rounds - self.options.warmup_rounds) * batch
            if first < 0:
                earlier = torch.arange(self.rounds * batch, (self.rounds + 1) * batch)
                seeds = [stream_seed("fast_warmup", self.seed, int(i)) for i in earlier]
            else:
                if self.student is not None:  # its state at that round is gone: replay in order
                    raise ValueError(
                        f"with the online student Fast's written rounds are made or replayed in order: "
                        f"round {self.rounds - self.options.warmup_rounds} was skipped"
                    )
                earlier = torch.arange(first, first + batch)
                seeds = [sample_seed(self.seed, int(i)) for i in earlier]
            self.round(seeds, layout_targets(earlier, self.per_class, num_classes))
        return self.round([sample_seed(self.seed, int(i)) for i in indices], targets)

    def replay(self, indices: torch.Tensor, targets: torch.Tensor) -> None:
        """Redo the round of an already written batch (its images are discarded), so the meta-generator
        follows the online student ``synthesize`` rebuilds round by round on a resume."""
        self.generate(indices, targets)

    def round(self, seeds: list[int], targets: torch.Tensor) -> SynthBatch:
        """One synthesis round (module docstring, steps 1-3) on the samples of ``seeds [B]``."""
        o = self.options
        written = self.rounds - o.warmup_rounds  # this round's batch number (negative: warm-up)
        adv = self.adv_weight > 0 and written >= 0 and self.student is not None and self.student.active
        generators = generators_for(seeds)
        z = torch.stack([torch.randn(o.latent_dim, generator=g) for g in generators])
        z = z.to(self.device).requires_grad_(True)
        targets_dev = targets.to(self.device)
        fast = copy.deepcopy(self.generator)
        optimizer = torch.optim.Adam(
            [{"params": fast.parameters()}, {"params": [z], "lr": o.lr_latent}],
            lr=o.lr_generator,
            betas=INNER_BETAS,
        )
        meta_grads = [torch.zeros_like(p) for p in self.generator.parameters()]
        per_batch = Units("batch")
        best, best_loss, logs = None, float("inf"), []
        for step in range(o.steps):
            images = fast(z)
            view = jitter_view(images, generators, o.jitter, o.flip)
            with BNStatistics(self.teacher.network, per_batch, o.first_bn_weight) as bn:
                logits = self.teacher(view).float()
                bn_loss = bn.loss()
            ce = cross_entropy(logits, targets_dev, per_batch)
            total = o.ce_weight * ce + o.bn_weight * bn_loss
            parts = {"ce": ce.item(), "bn": bn_loss.item()}
            if adv:
                adv_loss = adversarial(logits, self.student(to_rgb(view)), per_batch)
                total = total + self.adv_weight * adv_loss
                parts["adv"] = adv_loss.item()
            if total.item() < best_loss:
                best, best_loss = images.detach(), total.item()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            for grad, p in zip(meta_grads, fast.parameters(), strict=True):
                grad.add_(p.grad)
            optimizer.step()
            p_target = (logits.detach().softmax(dim=1) * targets_dev).sum(dim=1).mean()
            logs.append({"round": float(self.rounds), "step": float(step), **parts, "total": total.item(),
                         "p_target": p_target.item()})  # fmt: skip
        self.meta_optimizer.zero_grad(set_to_none=True)
        for grad, p in zip(meta_grads, self.generator.parameters(), strict=True):
            p.grad = grad
        self.meta_optimizer.step()
        self.rounds += 1
        return SynthBatch(images=to_rgb(best).cpu(), targets=targets, logs=logs)
