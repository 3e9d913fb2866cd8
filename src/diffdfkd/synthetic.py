"""The one interface of every synthetic-data source, ours and the baselines'.

    source.generate(indices: LongTensor [B], targets: FloatTensor [B, K]) -> SynthBatch
    source.replay(indices, targets) -> None

``indices`` are global sample indices (they fix every seed: ``runtime.sample_seed``) and ``targets``
one-hot or soft class targets. ``replay`` redoes, on a resume, what making an already written batch
did to the source's own state (a source whose rounds build on each other: Fast, CMI); the sources
without such state inherit the protocol's no-op. The sources by name are the table
``diffdfkd.synth.sources.SOURCES``; the rounds that call them, ``diffdfkd.synth.rounds``.

A source that takes the adversarial term is also handed the online student as an ``Adversary``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


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
    """The one interface of every synthetic-data source (sources subclass it for ``replay``'s no-op)."""

    #: whether a batch depends on the rounds before it (then ``replay`` redoes them on a resume)
    builds_on_earlier_rounds: bool = False

    def generate(self, indices: torch.Tensor, targets: torch.Tensor) -> SynthBatch:
        """Make the batch of samples ``indices [B]`` with ``targets [B, K]``."""
        ...

    def replay(self, indices: torch.Tensor, targets: torch.Tensor) -> None:  # noqa: B027 (a default)
        """Redo what making the already written batch ``indices`` did to the source's state, without
        keeping its images: called on a resume, in batch order, for every batch written before the
        last one to make, when the source ``builds_on_earlier_rounds`` or the batches are rounds of the
        online student (``diffdfkd.synth.rounds``). Default: nothing (a batch depends on its seeds alone)."""


class Adversary(Protocol):
    """The online student as the sources of ``L_adv`` see it (``diffdfkd.synth.online_student``):
    ``student(images [B, 3, H, W] in [0, 1]) -> logits [B, K]``, differentiable in the images, and
    ``active``: whether ``L_adv`` is on for the round being made (from round ``online.warmup_rounds``)."""

    @property
    def active(self) -> bool: ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


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


def layout_targets(indices: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """The dataset layout's one-hot targets ``[B, K]`` of samples ``indices [B]``: sample ``i`` has class
    ``(i // m) % K`` (``m = synth.samples_per_class_in_group``), so consecutive samples share a class."""
    return torch.nn.functional.one_hot((indices // per_class) % num_classes, num_classes).float()


def layout_rank(indices: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """Each sample's rank among its class's samples in that layout (0, 1, 2, ... in index order):
    ``(i // (m K)) m + i % m``."""
    return indices // (per_class * num_classes) * per_class + indices % per_class


def require_adversary(config, student: Adversary | None) -> None:
    """Refuse ``guidance.adv_weight > 0`` without the online student (``config``: an ExperimentConfig)."""
    from diffdfkd.config import ConfigError

    if config.guidance.adv_weight > 0 and student is None:
        raise ConfigError(
            f"guidance.adv_weight={config.guidance.adv_weight} needs the online student that "
            f"`synthesize` trains between rounds; build the source with student="
        )
