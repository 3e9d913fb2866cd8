"""DeepInversion (Yin et al., CVPR 2020) by its published recipe, as a source: ``synth.source=deepinversion``.

Images are optimised from noise so that the frozen teacher classifies them as their target class and
its BatchNorm layers see their training statistics. With ``v [B, C, S, S]`` the image in the teacher's
normalised space (``C = 1`` when ``teacher.grayscale``, else 3), ``x = v * std + mean`` in [0, 1] and
``u`` a view of ``x`` jittered (rolled by up to ``jitter`` pixels; mirrored when ``flip``) anew at
every iteration::

    L = w_ce CE(T(u), y) + w_bn L_bn(u) + w_tv1 TV_1(x) + w_tv2 TV_2(x) + w_l2 mean(v^2)

- ``v`` starts N(0, 1) (the teacher's normalised space, so ``x`` starts at the training data's mean
  and spread per channel); Adam (betas 0.5, 0.9 as in the published code) with its learning rate
  decayed from ``lr`` to 0 by a cosine; after each step ``v`` is clipped so that ``x`` stays in [0, 1].
- ``L_bn``: DeepInversion's BN-statistics distance summed over the teacher's BatchNorm layers, the
  first layer's multiplied by ``first_bn_weight`` (10 in the published code).
- Balance: every term comes from :mod:`diffdfkd.guidance.teacher_loss`, is taken per sample and summed
  over the batch, and every weight means a pull PER IMAGE. CE, TV and L2 are per sample. ``L_bn``:
  ``bn_per=group`` (the default, chosen on the BN-statistics distance) matches each mixing group's
  pooled statistics and charges each image its group's distance (``per_sample_weight``), so the
  BN pull per image does not shrink as ``1/g`` with the group size ``g`` and an image's gradient does
  not depend on how many groups share its batch; ``bn_per=sample`` takes each image's own spatial
  statistics (the paper's batch of one), and then an image's gradient, and with Adam acting per pixel
  its whole trajectory, depends on nothing but itself: not on its group, its batch or their sizes.

Sample ``i`` draws its start and its jitter from its own generator seeded by ``runtime.sample_seed(seed, i)``.
"""

from __future__ import annotations

import torch

from diffdfkd.config import DeepInversionConfig, ExperimentConfig
from diffdfkd.guidance.teacher_loss import BNStatistics, Units, cross_entropy, l2_prior, tv_l1, tv_l2
from diffdfkd.runtime import generators_for, sample_seed
from diffdfkd.synthetic import SynthBatch, SyntheticSource, check_groups

LOG_EVERY = 10
ADAM_BETAS = (0.5, 0.9)


def jitter_view(
    images: torch.Tensor, generators: list[torch.Generator], shift: int, flip: bool
) -> torch.Tensor:
    """Each sample of ``images [B, C, H, W]`` rolled by a random ``(dy, dx)`` in ``[-shift, shift]``
    and, when ``flip``, mirrored left-right with probability 1/2, from its own generator."""
    views = []
    for image, generator in zip(images, generators, strict=True):
        if shift > 0:
            dy, dx = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            image = image.flip(dims=(2,))
        views.append(image)
    return torch.stack(views)


def image_channels(teacher: torch.nn.Module, grayscale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``mean, std [1, C, 1, 1]`` of the channels an image-space method optimises: the teacher's
    RGB normalisation, or for a grey teacher (``grayscale``) one channel with their averages."""
    mean = teacher.mean.expand(1, 3, 1, 1) if teacher.mean.shape[1] == 1 else teacher.mean
    std = teacher.std.expand(1, 3, 1, 1) if teacher.std.shape[1] == 1 else teacher.std
    if grayscale:
        return mean.mean(dim=1, keepdim=True), std.mean(dim=1, keepdim=True)
    return mean, std


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1 or 3, H, W]`` -> ``[B, 3, H, W]`` (grey copied to the three channels)."""
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


class DeepInversionSource(SyntheticSource):
    """Teacher inversion by pixel optimisation (the DeepInversion baseline, without its competition term).

    ``teacher``: a ``Teacher`` (images in [0, 1] -> logits; ``input_size``, ``mean``/``std`` and the
    inner ``model`` whose BatchNorm layers ``L_bn`` hooks). Images are made at the teacher's input size.
    """

    def __init__(self, config: ExperimentConfig, teacher: torch.nn.Module) -> None:
        self.options: DeepInversionConfig = config.deepinversion
        self.teacher = teacher
        self.seed = config.seed
        self.group_size = config.synth.group_size
        self.size = teacher.input_size
        self.device = next(iter(teacher.state_dict().values())).device
        self.mean, self.std = image_channels(teacher, config.teacher.grayscale)
        per = self.options.bn_per
        self.bn_units = Units(per, self.group_size if per == "group" else 1)

    def initial_images(self, indices: torch.Tensor) -> torch.Tensor:
        """The starting images ``[B, 3, S, S]`` in [0, 1] of samples ``indices [B]``."""
        start, _ = self._start(indices)
        return to_rgb(self.pixels(start))

    def _start(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Generator]]:
        """The starting ``v [B, C, S, S]`` ~ N(0, 1) clipped to valid pixels, and the per-sample
        generators, which then go on to draw the jitter."""
        generators = generators_for([sample_seed(self.seed, int(i)) for i in indices])
        channels = self.mean.shape[1]
        noise = torch.stack([torch.randn(channels, self.size, self.size, generator=g) for g in generators])
        return self.clip(noise.to(self.device)), generators

    def pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        """``x = v * std + mean``: normalised ``v [B, C, S, S]`` -> pixels in [0, 1]."""
        return normalised * self.std + self.mean

    def clip(self, normalised: torch.Tensor) -> torch.Tensor:
        """``v`` clipped so that its pixels ``v * std + mean`` lie in [0, 1]."""
        low, high = -self.mean / self.std, (1 - self.mean) / self.std
        return torch.maximum(torch.minimum(normalised, high), low)

    def loss(
        self, normalised: torch.Tensor, view: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``L`` of ``v [B, C, S, S]`` with its jittered pixel view ``u [B, C, S, S]`` against
        ``targets [B, K]`` (module docstring), and its named parts."""
        o = self.options
        per_sample = Units("sample")
        bn_stats = BNStatistics(
            self.teacher.network, self.bn_units, o.first_bn_weight, per_sample_weight=True
        )
        with bn_stats as bn:
            logits = self.teacher(view).float()
            bn_loss = bn.loss()
        images = self.pixels(normalised)
        parts = {
            "ce": cross_entropy(logits, targets, per_sample),
            "bn": bn_loss,
            "tv_l1": tv_l1(images, per_sample),
            "tv_l2": tv_l2(images, per_sample),
            "l2": l2_prior(normalised, per_sample),
        }
        weights = {"ce": o.ce_weight, "bn": o.bn_weight, "tv_l1": o.tv_l1_weight,
                   "tv_l2": o.tv_l2_weight, "l2": o.l2_weight}  # fmt: skip
        total = sum(weights[k] * parts[k] for k in parts)
        parts["total"] = total
        parts["p_target"] = (logits.detach().softmax(dim=1) * targets).sum(dim=1).mean()
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """Optimise images for ``indices [B]`` (whole mixing groups) with ``targets [B, K]``.

        ``logs`` holds the named losses of the first iteration, every ``LOG_EVERY``-th and the last.
        """
        check_groups(indices, self.group_size)
        o = self.options
        start, generators = self._start(indices)
        normalised = start.requires_grad_(True)
        targets_dev = targets.to(self.device)
        optimizer = torch.optim.Adam([normalised], lr=o.lr, betas=ADAM_BETAS)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.iterations)
        logs = []
        for step in range(o.iterations):
            view = jitter_view(self.pixels(normalised), generators, o.jitter, o.flip)
            total, parts = self.loss(normalised, view, targets_dev)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                normalised.copy_(self.clip(normalised))
            if step % LOG_EVERY == 0 or step == o.iterations - 1:
                logs.append({"step": float(step), **parts})
        images = to_rgb(self.pixels(normalised.detach()).clamp(0.0, 1.0))
        return SynthBatch(images=images.cpu(), targets=targets, logs=logs)
