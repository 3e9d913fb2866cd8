"""CMI (Fang et al., IJCAI 2021, "Contrastive Model Inversion for Data-Free Knowledge Distillation")
as a source: ``synth.source=cmi``.

Each batch of the dataset is one ROUND. In round ``r`` with targets ``y``, a generator
``G: z [B, d] -> x [B, C, S, S]`` in [0, 1] (Fast's DCGAN generator, ``C = 1`` when
``teacher.grayscale``), freshly initialised (DCGAN init, from the round's own seed), and per-sample
latents ``z ~ N(0, I)`` are optimised jointly with Adam for ``cmi.iterations`` steps on::

    L = w_ce CE(T(g), y) + w_bn L_bn(g) [+ w_adv L_adv(T(g), S(g))] + w_cr L_cr

- ``g`` is the GLOBAL view of ``x`` (shifted by up to ``jitter`` pixels, wrapping; mirrored when
  ``flip``), ``l`` its LOCAL view (a random resized crop of at least ``local_scale`` of the area, aspect
  3/4 to 4/3, resized back to ``S``), both drawn anew at each step from the sample's own generator.
- CE, ``L_bn`` (the batch's pooled statistics, as the published code and Fast) and ``L_adv`` (against
  the online student, :mod:`diffdfkd.synth.online_student`, in the rounds where it is ``active``)
  are taken per batch (:mod:`diffdfkd.guidance.teacher_loss` decides the units).
- ``L_cr``, CMI's instance discrimination. ``f(v) [B, D]``: the teacher's per-image feature means at
  the input of every BatchNorm layer (spatial mean per channel, concatenated). A projection head
  ``h`` (an MLP ``D -> D -> head_dim``, output L2-normalised) maps local and global features; with
  ``M`` negatives ``(f_l, f_g)`` drawn from a memory bank of earlier rounds' images::

      a = h([f(l); f_l^bank]) [B + M, P],   b = stopgrad(h([f(g); f_g^bank])) [B + M, P]
      L_cr = mean_{i < B} CE_i + mean_{i >= B} CE_i,   CE_i = -log softmax_j(a_i . b_j / tau)_i

  so each image's local view must find its own global view among the batch's and the bank's: images
  that the teacher's features cannot tell apart from each other or from earlier ones are pushed away
  (diversity). The bank's rows give the head its gradient; the split mean keeps the batch's share
  from shrinking as the bank grows (the published code's "naive implementation").

The round's images are those of the lowest ``L`` seen; their ``(f(l), f(g))`` join the bank (at most
``bank_size`` rows, the oldest dropped). The head (Adam at ``lr``) and the bank carry over from round
to round, so round ``r`` depends on every earlier round: asked for batch ``b``, the source first redoes
(and discards) the rounds it lacks, as Fast does, and with the online student ``replay`` redoes each
written round in step with it, so a resumed run ends byte-identical. Left out: the published
pre-inverted initial data (``cmi_init``) and its image pool (here the rounds write a fixed dataset,
distilled afterwards with the same KD recipe as every other source).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffdfkd.baselines.deepinversion import image_channels, jitter_view, to_rgb
from diffdfkd.baselines.fast import FastGenerator
from diffdfkd.config import CMIConfig, ConfigError, ExperimentConfig
from diffdfkd.guidance.teacher_loss import BNStatistics, Units, adversarial, batchnorm_layers, cross_entropy
from diffdfkd.runtime import generators_for, sample_seed, stream_seed
from diffdfkd.synthetic import Adversary, SynthBatch, SyntheticSource, layout_targets, require_adversary

GENERATOR_BETAS = (0.5, 0.999)
LOG_EVERY = 10


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation (the published ``reset_model``): conv / linear weights N(0, 0.02), biases
    0; BatchNorm scales N(1, 0.02), shifts 0. Draws from torch's global stream."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ProjectionHead(nn.Module):
    """``features [N, D] -> [N, P]`` on the unit sphere: Linear(D, D), ReLU, Linear(D, P), L2 norm."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


class FeatureMeans:
    """Forward hooks recording, per image, the spatial mean of each channel at the input of every
    BatchNorm layer of ``model``; ``features()`` is the last pass's ``[B, D]`` (layers concatenated).
    A context manager, as ``BNStatistics``."""

    def __init__(self, model: nn.Module) -> None:
        self._values: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in batchnorm_layers(model)]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        self._values.append(x.flatten(2).mean(dim=2) if x.dim() > 2 else x)

    def features(self) -> torch.Tensor:
        """The feature means ``[B, D]`` of the last forward pass, and a fresh record for the next."""
        if not self._values:
            raise RuntimeError("no features recorded: run the teacher inside the context first")
        values, self._values = self._values, []
        return torch.cat(values, dim=1)

    def __enter__(self) -> FeatureMeans:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def instance_contrast(
    local: torch.Tensor, global_: torch.Tensor, current: int, temperature: float
) -> torch.Tensor:
    """CMI's contrastive loss ``L_cr`` (module docstring) of projected views ``local, global_ [N, P]``
    whose first ``current`` rows are the batch's (the rest the bank's): row ``i``'s positive is
    column ``i``; the global side is not differentiated. A scalar."""
    logits = local @ global_.detach().T / temperature
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    loss = per_row[:current].mean()
    return loss + per_row[current:].mean() if len(per_row) > current else loss


def local_view(
    images: torch.Tensor, generators: list[torch.Generator], scale: float, flip: bool
) -> torch.Tensor:
    """Each sample of ``images [B, C, S, S]`` cropped to a random box of area fraction in
    ``[scale, 1]`` and aspect ratio in ``[3/4, 4/3]`` (log-uniform), at a uniform position, resized back
    to ``S x S`` (bilinear) and, when ``flip``, mirrored with probability 1/2; from its own generator."""
    thetas = []
    for generator in generators:
        area, log_ratio, cx, cy, mirror = torch.rand(5, generator=generator).tolist()
        area = scale + (1 - scale) * area
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * log_ratio)
        w, h = min(1.0, math.sqrt(area * ratio)), min(1.0, math.sqrt(area / ratio))
        sx = -w if flip and mirror < 0.5 else w
        # the box's centre in [-1, 1] coordinates, keeping the box inside the image
        thetas.append([[sx, 0.0, (2 * cx - 1) * (1 - w)], [0.0, h, (2 * cy - 1) * (1 - h)]])
    theta = torch.tensor(thetas, dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class CMISource(SyntheticSource):
    """The CMI baseline: a generator optimised per batch with CE + BN + ``L_adv`` + the contrastive
    loss against a memory bank (module docstring), one round per batch.

    ``teacher``: a ``Teacher`` (images in [0, 1] -> logits; ``input_size``, ``mean``/``std`` and the
    inner ``model`` whose BatchNorm layers ``L_bn`` and the features hook). ``student``: the online
    student, for ``L_adv`` (``guidance.adv_weight > 0``; the one the synthesis rounds train).
    """

    builds_on_earlier_rounds = True  # the head and the memory bank carry over

    def __init__(
        self, config: ExperimentConfig, teacher: torch.nn.Module, student: Adversary | None = None
    ) -> None:
        require_adversary(config, student)
        self.options: CMIConfig = config.cmi
        self.student = student
        self.adv_weight = config.guidance.adv_weight
        self.teacher = teacher
        self.seed = config.seed
        self.per_class = config.synth.samples_per_class_in_group
        self.device = next(iter(teacher.state_dict().values())).device
        self.channels = image_channels(teacher, config.teacher.grayscale)[0].shape[1]
        if teacher.input_size % 4:
            raise ConfigError(
                f"the CMI generator makes images whose side is a multiple of 4, not {teacher.input_size}"
            )
        dim = self.feature_dim()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed("cmi_head", self.seed))
            head = ProjectionHead(dim, self.options.head_dim)
        self.head = head.to(self.device).train()
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=self.options.lr)
        self.bank = torch.zeros(0, 2 * dim, device=self.device)  # [local | global] raw features
        self.rounds = 0

    def feature_dim(self) -> int:
        """``D``: the number of channels at the inputs of the teacher's BatchNorm layers."""
        probe = torch.zeros(
            1, self.channels, self.teacher.input_size, self.teacher.input_size, device=self.device
        )
        with torch.no_grad(), FeatureMeans(self.teacher.network) as hooks:
            self.teacher(probe)
            return hooks.features().shape[1]

    def fresh_generator(self, round_number: int) -> FastGenerator:
        """The round's generator, DCGAN-initialised from its own seed (the published per-batch reset)."""
        o = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed("cmi_generator", self.seed, round_number))
            generator = FastGenerator(o.latent_dim, o.width, self.teacher.input_size, self.channels)
            dcgan_init(generator)
        return generator.to(self.device).train()

    def negatives(self, round_number: int) -> torch.Tensor:
        """The bank rows ``[M, 2D]`` of this round: ``negatives`` drawn without replacement (all when
        the bank holds fewer), the same draw at every step of the round."""
        n = self.options.negatives
        if len(self.bank) <= n:
            return self.bank
        draws = torch.Generator().manual_seed(stream_seed("cmi_negatives", self.seed, round_number))
        return self.bank[torch.randperm(len(self.bank), generator=draws)[:n].to(self.bank.device)]

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """The round of batch ``indices [B]`` (consecutive, starting at a multiple of ``B``) with
        ``targets [B, K]``, after redoing the earlier rounds this source has not done yet."""
        batch = len(indices)
        first = int(indices[0])
        if not torch.equal(indices, torch.arange(first, first + batch)) or first % batch:
            raise ValueError("CMI takes whole batches of consecutive indices (one round per batch)")
        number = first // batch
        if self.rounds > number:
            raise ValueError(
                f"CMI makes its rounds in order: round {number} asked after round {self.rounds - 1}"
            )
        while self.rounds < number:  # rounds of batches made by another process (resume, shards)
            if self.student is not None:  # its state at that round is gone: replay in order
                raise ValueError(
                    f"with the online student CMI's rounds are made or replayed in order: round "
                    f"{self.rounds} was skipped"
                )
            earlier = torch.arange(self.rounds * batch, (self.rounds + 1) * batch)
            self.round(earlier, layout_targets(earlier, self.per_class, targets.shape[1]))
        return self.round(indices, targets)

    def replay(self, indices: torch.Tensor, targets: torch.Tensor) -> None:
        """Redo the round of an already written batch (its images are discarded): the head and the bank
        follow the online student the synthesis rounds rebuild."""
        self.generate(indices, targets)

    def round(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """One round (module docstring) on the samples ``indices [B]``."""
        o = self.options
        adv = self.adv_weight > 0 and self.student is not None and self.student.active
        generators = generators_for([sample_seed(self.seed, int(i)) for i in indices])
        z = torch.stack([torch.randn(o.latent_dim, generator=g) for g in generators])
        z = z.to(self.device).requires_grad_(True)
        targets_dev = targets.to(self.device)
        generator = self.fresh_generator(self.rounds)
        optimizer = torch.optim.Adam([*generator.parameters(), z], lr=o.lr, betas=GENERATOR_BETAS)
        bank = self.negatives(self.rounds)
        bank_local, bank_global = bank.chunk(2, dim=1)
        per_batch = Units("batch")
        best, best_features, best_loss, logs = None, None, float("inf"), []
        for step in range(o.iterations):
            images = generator(z)
            view = jitter_view(images, generators, o.jitter, o.flip)
            crop = local_view(images, generators, o.local_scale, o.flip)
            with FeatureMeans(self.teacher.network) as features:
                with BNStatistics(self.teacher.network, per_batch) as bn:
                    logits = self.teacher(view).float()
                    bn_loss = bn.loss()
                global_features = features.features()
                self.teacher(crop)
                local_features = features.features()
            ce = cross_entropy(logits, targets_dev, per_batch)
            projected = self.head(torch.cat([local_features, bank_local, global_features, bank_global]))
            local, global_ = projected.chunk(2, dim=0)
            contrast = instance_contrast(local, global_, len(indices), o.temperature)
            total = o.ce_weight * ce + o.bn_weight * bn_loss + o.contrastive_weight * contrast
            parts = {"ce": ce.item(), "bn": bn_loss.item(), "contrast": contrast.item()}
            if adv:
                adv_loss = adversarial(logits, self.student(to_rgb(view)), per_batch)
                total = total + self.adv_weight * adv_loss
                parts["adv"] = adv_loss.item()
            if total.item() < best_loss:
                best, best_loss = images.detach(), total.item()
                best_features = torch.cat([local_features, global_features], dim=1).detach()
            optimizer.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            self.head_optimizer.step()
            if step % LOG_EVERY == 0 or step == o.iterations - 1:
                p_target = (logits.detach().softmax(dim=1) * targets_dev).sum(dim=1).mean()
                logs.append({"round": float(self.rounds), "step": float(step), **parts,
                             "total": total.item(), "p_target": p_target.item()})  # fmt: skip
        if best is None:
            raise ValueError(
                f"CMI round {self.rounds}: the loss was never finite ({logs[-1] if logs else {}})"
            )
        self.bank = torch.cat([self.bank, best_features])[-o.bank_size :]
        self.rounds += 1
        return SynthBatch(images=to_rgb(best).cpu(), targets=targets, logs=logs)
