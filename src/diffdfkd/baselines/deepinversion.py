"""DeepInversion (Yin et al., CVPR 2020) as a synthetic-data source: ``synth.source=deepinversion``.

Pixels are optimised from noise so that the frozen teacher classifies them as their target class and
its BatchNorm layers see their training statistics::

    L = w_ce * CE(T(v), y) + w_bn * L_bn + w_tv * TV(x) + w_l2 * L2(x)

where ``x [B, 3, S, S]`` in [0, 1] are the pixels (Adam, clamped to [0, 1] after every step), ``v`` is a
randomly jittered (shifted up to ``jitter`` pixels, and mirrored when ``flip``) view of ``x`` drawn anew
at every iteration. All terms come from :mod:`diffdfkd.guidance.teacher_loss`, with its batch
semantics: ``L_bn`` per mixing group (``bn_statistics``), ``TV(x)`` the mean squared difference of
neighbouring pixels (``tv_l2``) and ``L2(x)`` the mean squared normalised input (``l2_prior``), both
per sample and summed over samples like CE.

Every loss is a sum over samples (or mixing groups) and Adam acts per pixel, so an image depends only on
its own mixing group, never on how many groups share its batch. Sample ``i`` starts from uniform noise
and draws its jitter from its own generator seeded by ``runtime.sample_seed(seed, i)``.
"""

from __future__ import annotations

import torch

from diffdfkd.config import DeepInversionConfig, ExperimentConfig
from diffdfkd.guidance.teacher_loss import BNStatistics, Units, cross_entropy, l2_prior, tv_l2
from diffdfkd.runtime import generators_for, sample_seed
from diffdfkd.synthetic import SynthBatch, check_groups

LOG_EVERY = 10


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


class DeepInversionSource:
    """Teacher inversion by pixel optimisation (the DeepInversion baseline, without its competition term).

    ``teacher``: a ``Teacher`` (images in [0, 1] -> logits; ``input_size``, ``preprocess`` and the inner
    ``model`` whose BatchNorm layers ``L_bn`` hooks). Images are made at the teacher's input size.
    """

    def __init__(self, config: ExperimentConfig, teacher: torch.nn.Module) -> None:
        self.options: DeepInversionConfig = config.deepinversion
        self.teacher = teacher
        self.seed = config.seed
        self.group_size = config.synth.group_size
        self.size = teacher.input_size
        self.device = next(iter(teacher.state_dict().values())).device

    def initial_images(self, indices: torch.Tensor) -> torch.Tensor:
        """The starting noise ``[B, 3, S, S]``, uniform in [0, 1], of samples ``indices [B]``."""
        return self._start(indices)[0]

    def _start(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Starting noise and the per-sample generators, which then go on to draw the jitter."""
        generators = generators_for([sample_seed(self.seed, int(i)) for i in indices])
        noise = torch.stack([torch.rand(3, self.size, self.size, generator=g) for g in generators])
        return noise, generators

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L`` of ``images [B, 3, S, S]`` (already jittered) against ``targets [B, K]``, and its parts."""
        o = self.options
        per_sample = Units("sample")
        with BNStatistics(self.teacher.model, Units("group", self.group_size)) as bn:
            logits = self.teacher(images).float()
            bn_loss = bn.loss()
        ce = cross_entropy(logits, targets, per_sample)
        tv = tv_l2(images, per_sample)
        l2 = l2_prior(self.teacher.preprocess(images), per_sample)
        total = o.ce_weight * ce + o.bn_weight * bn_loss + o.tv_weight * tv + o.l2_weight * l2
        p_target = (logits.detach().softmax(dim=1) * targets).sum(dim=1).mean()
        parts = {"ce": ce, "bn": bn_loss, "tv": tv, "l2": l2, "total": total, "p_target": p_target}
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """Optimise images for ``indices [B]`` (whole mixing groups) with ``targets [B, K]``.

        ``logs`` holds the named losses of the first iteration, every ``LOG_EVERY``-th and the last.
        """
        check_groups(indices, self.group_size)
        o = self.options
        pixels, generators = self._start(indices)
        pixels = pixels.to(self.device).requires_grad_(True)
        targets_dev = targets.to(self.device)
        optimizer = torch.optim.Adam([pixels], lr=o.lr)
        logs = []
        for step in range(o.iterations):
            view = jitter_view(pixels, generators, o.jitter, o.flip)
            total, parts = self.loss(view, targets_dev)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            with torch.no_grad():
                pixels.clamp_(0.0, 1.0)
            if step % LOG_EVERY == 0 or step == o.iterations - 1:
                logs.append({"step": float(step), **parts})
        return SynthBatch(images=pixels.detach().cpu(), targets=targets, logs=logs)
