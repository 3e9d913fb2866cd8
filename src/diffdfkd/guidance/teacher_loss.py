"""Every loss term computed against the frozen teacher, shared by DiffDFKD's guide and DeepInversion.

Terms (``B`` samples, ``K`` classes):

- ``cross_entropy``: ``-sum_k y_k log softmax(T(x))_k`` per sample (soft targets allowed);
- ``bn_statistics``: DeepInversion's feature-statistics prior (Yin et al. 2020): for every BatchNorm
  layer ``l`` of the teacher, ``||mean(x_l) - running_mean_l||_2 + ||var(x_l) - running_var_l||_2``
  (unsquared L2 norms, biased variance over the unit's samples and spatial positions);
- ``adversarial``: ``-KL(p_T || p_S) * 1[argmax p_S = argmax p_T]`` per sample (CMI / Fast-Datafree);
- the image priors of DeepInversion: ``tv_l1`` / ``tv_l2`` (mean absolute / squared difference of
  neighbouring pixels, rows plus columns) and ``l2_prior`` (mean squared value) per sample.

Batch semantics, decided here and nowhere else. Every term takes a ``Units`` argument that splits the
batch into units of ``m`` consecutive samples:

- ``Units("sample")``: ``m = 1``, each image alone (the paper's batch of one);
- ``Units("group", g)``: ``m = g``, one mixing group (Latent CutMix's partners, a sharded batch);
- ``Units("batch")``: ``m = B``, the whole batch (the usual mean-over-batch of PyTorch code).

A term's value for a unit is the MEAN over the unit's samples of the per-sample term, or, for
``bn_statistics``, the distance of the unit's POOLED statistics (its samples and positions together);
the loss is the SUM over units. So per sample and per group, an image's gradient depends only on its own
unit, never on how many units share its batch (images independent of batch layout and shard).

What a weight means follows: a weight multiplies one term per unit. Per-sample terms per sample are the
plain sum over images. ``bn_statistics`` per group adds one distance per group of ``g`` images, where
per sample adds ``g`` (one per image, each from that image's own spatial statistics): at the same
weight, each image's pull towards the running statistics is about ``g`` times stronger per sample than
per group. ``Units("group", 1)`` equals ``Units("sample")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffdfkd.errors import UserError
from diffdfkd.models.torchscript import scripted_batchnorm_names
from diffdfkd.runtime import batchnorm_modules

UNIT_KINDS = ("sample", "group", "batch")


class NoBatchNormError(UserError, ValueError):
    """The BN-statistics loss was asked of a teacher whose BatchNorm layers it cannot reach."""


@dataclass(frozen=True)
class Units:
    """How a batch splits into loss units: ``per`` in ``sample | group | batch``; ``group_size`` for groups."""

    per: str
    group_size: int = 1

    def __post_init__(self) -> None:
        if self.per not in UNIT_KINDS:
            raise ValueError(f"units per {self.per!r}: expected one of {', '.join(UNIT_KINDS)}")
        if self.group_size < 1 or (self.per != "group" and self.group_size != 1):
            raise ValueError(f"group_size={self.group_size} needs per='group' and a value >= 1")

    def size(self, batch: int) -> int:
        """Samples per unit ``m`` for a batch of ``batch``; the batch must hold whole units."""
        m = {"sample": 1, "group": self.group_size, "batch": batch}[self.per]
        if batch % m:
            raise ValueError(f"a batch of {batch} is not a whole number of groups of {m}")
        return m

    def reduce(self, terms: torch.Tensor) -> torch.Tensor:
        """``sum_units mean_(i in unit) t_i = sum(terms) / m`` of per-sample ``terms [B, ...]``; a scalar.

        ``terms`` may keep trailing dimensions that sum into the per-sample term (e.g. CE's ``[B, K]``).
        """
        return terms.sum() / self.size(terms.shape[0])


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, units: Units) -> torch.Tensor:
    """``CE(logits [B, K], targets [B, K])``: one-hot or soft targets (rows summing to 1); a scalar."""
    return units.reduce(-(targets * F.log_softmax(logits.float(), dim=1)))


def adversarial(teacher_logits: torch.Tensor, student_logits: torch.Tensor, units: Units) -> torch.Tensor:
    """``-KL(p_T || p_S) * 1[argmax p_S = argmax p_T]`` of ``[B, K]`` logits; a scalar.

    Minimising it pushes samples the student already agrees on towards teacher-student disagreement.
    """
    log_p_t = F.log_softmax(teacher_logits.float(), dim=1)
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    agree = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()
    return units.reduce(-(kl * agree))


def _neighbour_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and horizontal neighbour differences of ``images [B, C, H, W]``."""
    return images[:, :, 1:, :] - images[:, :, :-1, :], images[:, :, :, 1:] - images[:, :, :, :-1]


def tv_l1(images: torch.Tensor, units: Units) -> torch.Tensor:
    """``mean|x[h+1] - x[h]| + mean|x[w+1] - x[w]|`` per sample of ``images [B, C, H, W]``; a scalar."""
    dh, dw = _neighbour_differences(images)
    return units.reduce(dh.abs().flatten(1).mean(dim=1) + dw.abs().flatten(1).mean(dim=1))


def tv_l2(images: torch.Tensor, units: Units) -> torch.Tensor:
    """``mean(x[h+1] - x[h])^2 + mean(x[w+1] - x[w])^2`` per sample of ``images [B, C, H, W]``; a scalar."""
    dh, dw = _neighbour_differences(images)
    return units.reduce(dh.pow(2).flatten(1).mean(dim=1) + dw.pow(2).flatten(1).mean(dim=1))


def l2_prior(inputs: torch.Tensor, units: Units) -> torch.Tensor:
    """``mean(x^2)`` per sample of ``inputs [B, ...]`` (DeepInversion: the teacher's normalised input)."""
    return units.reduce(inputs.pow(2).flatten(1).mean(dim=1))


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` whose inputs a forward hook sees.

    Raises ``NoBatchNormError`` when there are none, naming what was found and the ways out. A
    TorchScript model's layers run inside compiled code that calls no hooks: ``load_teacher`` converts
    such a teacher to an eager graph first, so only a TorchScript model handed in directly, or one the
    conversion failed on (``load_teacher`` logs why), ends here.
    """
    layers = batchnorm_modules(model)
    if layers:
        return layers
    scripted = scripted_batchnorm_names(model)
    ways_out = (
        "set guidance.bn_weight=0 (or deepinversion.bn_weight=0) to drop the BN-statistics term, or give "
        "a teacher with BatchNorm layers (a zoo arch or timm:<name> with a state dict)"
    )
    if scripted:
        raise NoBatchNormError(
            f"the teacher's {len(scripted)} BatchNorm layers ({', '.join(scripted[:4])}"
            f"{' ...' if len(scripted) > 4 else ''}) are compiled TorchScript, which forward hooks do not "
            f"see: load it with diffdfkd.models.load_teacher, which converts it to an eager graph (when that "
            f"conversion fails it logs why), or {ways_out}"
        )
    raise NoBatchNormError(
        f"the teacher ({type(model).__name__}, {sum(1 for _ in model.modules())} modules) has no BatchNorm "
        f"layer, so the BN-statistics loss has no running statistics to match: {ways_out}"
    )


class BNStatistics:
    """``bn_statistics`` (see the module docstring), summed over the hooked layers and the units.

    Forward hooks on every BatchNorm layer of ``model`` record the distance of each unit's statistics
    of the layer input ``x [B, C, ...]`` to the layer's running statistics. Use as a context manager
    (the hooks are removed on exit) around the teacher's forward pass; ``loss()`` reads that pass.

    ``first_layer_weight`` multiplies the first BatchNorm layer's distance (in module order), the
    ``first_bn_multiplier`` of DeepInversion's published code (10 there): the first layer sees pixel
    statistics, which the later layers constrain only weakly. 1 (the default): every layer alike.

    ``per_sample_weight``: count each unit's distance once per sample of the unit (``m`` times), so that
    a weight means the same pull per image whatever the unit size (per group of ``g``, each image is
    charged its group's distance, instead of sharing one distance among ``g`` images). Per sample it
    changes nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        units: Units,
        first_layer_weight: float = 1.0,
        *,
        per_sample_weight: bool = False,
    ) -> None:
        if first_layer_weight < 0:
            raise ValueError(f"first_layer_weight={first_layer_weight} must be >= 0")
        self.units = units
        self.first_layer_weight = first_layer_weight
        self.per_sample_weight = per_sample_weight
        self._values: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in batchnorm_layers(model)]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].float()
        batch, channels = x.shape[:2]
        m = self.units.size(batch)
        pooled = x.reshape(batch // m, m, channels, -1).transpose(1, 2)
        pooled = pooled.reshape(batch // m, channels, -1)  # [U, C, m * spatial]
        mean = pooled.mean(dim=2)
        var = pooled.var(dim=2, unbiased=False)
        mean_term = torch.linalg.vector_norm(mean - module.running_mean.float(), dim=1)
        var_term = torch.linalg.vector_norm(var - module.running_var.float(), dim=1)
        weight = self.first_layer_weight if not self._values else 1.0
        weight *= m if self.per_sample_weight else 1
        self._values.append(weight * (mean_term + var_term).sum())

    def loss(self) -> torch.Tensor:
        """Sum over hooked layers and units of the last forward pass; a scalar."""
        if not self._values:
            raise RuntimeError("no BatchNorm statistics recorded: run the teacher inside the context first")
        return torch.stack(self._values).sum()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
