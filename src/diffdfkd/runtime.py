"""The small helpers every stage shares: device, dtype, seed derivation, and "what changed" in a config.

- ``resolve_device("auto" | "cpu" | "cuda" | "cuda:<n>")``: ``auto`` is ``cuda:$LOCAL_RANK`` (torchrun)
  when CUDA is available, else ``cpu``.
- ``resolve_dtype("fp32" | "bf16" | "fp16")``.
- ``STREAMS``: the table of every random stream derived from the run seed, and ``stream_seed(name, seed,
  *indices)``, the only way code derives one: the key ``(seed, stream id, *indices)`` with each stream's
  fixed number of indices, so two streams (or two indices of one) never share a key. ``sample_seed`` /
  ``group_seed`` are synthesis's two streams.
- ``derive_seed(*keys)``: a 63-bit seed from a tuple of non-negative integers via numpy's
  ``SeedSequence`` (well mixed: no collisions between e.g. (seed 0, index 1000) and (seed 1, index 0),
  unlike ``seed + index``), each integer written as a self-delimiting run of 31-bit words so that
  different tuples of one length never give the same entropy (``SeedSequence`` alone reads ``2**32`` as
  the words ``(0, 1)`` and ignores trailing zero words).
- ``BatchNormBase`` / ``batchnorm_modules(model)``: torch's base class of every BatchNorm layer (a
  private name of torch's, named here once) and the BatchNorm layers of a model.
- ``changed_keys`` / ``describe_changes``: the dotted keys in which two (nested) configs differ, used
  wherever a folder made with another config is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from diffdfkd.errors import UserError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UNSET = "<unset>"


@dataclass(frozen=True)
class Stream:
    """One random stream of a run: ``derive_seed(seed, id, *indices)`` with one index per name in ``indices``."""

    id: int
    indices: tuple[str, ...]
    what: str


# Every stream derived from the run seed, by name. Ids 0-6 are those the streams had before this table
# (so synthetic datasets keep their bytes); a new stream takes the next free id, never a used one.
STREAMS: dict[str, Stream] = {
    "sample": Stream(0, ("index",), "a sample's initial noise z_T and its sampler noise (every source)"),
    "group": Stream(1, ("group",), "a mixing group's Latent CutMix boxes and partners"),
    "real_order": Stream(2, ("class",), "the real source's order of a class's images"),
    "fast_generator": Stream(3, (), "Fast's meta-generator's initial weights"),
    "fast_warmup": Stream(4, ("index",), "Fast's warm-up rounds' latents (indices before the first image)"),
    "online_student": Stream(5, (), "the online student's initial weights"),
    "online_draws": Stream(6, ("round",), "the online student's draws from the pool in a round"),
    "train_order": Stream(7, ("epoch",), "the trainer's data order in an epoch (the same on every rank)"),
    "train_augment": Stream(8, ("epoch", "rank"), "the trainer's augmentation in an epoch, per rank"),
    "train_torch": Stream(
        9, ("epoch", "rank"), "the trainer's global torch RNG (dropout) in an epoch, per rank"
    ),
    "student_init": Stream(10, (), "the distilled student's initial weights"),
    "noise": Stream(
        11, ("index",), "the noise source's image of a sample (was id 3 beside Fast's generator)"
    ),
    "cmi_head": Stream(12, (), "CMI's projection head's initial weights"),
    "cmi_generator": Stream(13, ("round",), "CMI's per-batch generator's initial weights"),
    "cmi_negatives": Stream(14, ("round",), "CMI's draws of negatives from its memory bank in a round"),
}


class SettingError(UserError, ValueError):
    """A device, dtype or seed that cannot be used, with what is accepted."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` (``cuda:$LOCAL_RANK`` under torchrun) when available, else ``cpu``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise SettingError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<n>: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"device {device!r} was asked for but CUDA is not available; use cpu or auto")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` (or one of those torch dtypes) -> the torch dtype."""
    if isinstance(dtype, str):
        if dtype not in TORCH_DTYPES:
            raise SettingError(f"unknown dtype {dtype!r}; choose from {', '.join(TORCH_DTYPES)}")
        return TORCH_DTYPES[dtype]
    if dtype not in TORCH_DTYPES.values():
        raise SettingError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    return dtype


def entropy_words(keys: tuple[int, ...]) -> list[int]:
    """The 32-bit words ``derive_seed`` hands ``SeedSequence`` for ``keys``: each integer as base-2**31
    digits, low first, every digit but the last with bit 31 set. A key below ``2**31`` is its own one
    word (as ``SeedSequence`` reads it), and no integer's words are a prefix of another's: tuples of
    one length that differ give word lists that differ at a position both have."""
    words: list[int] = []
    for key in keys:
        while key >= 1 << 31:
            words.append((key & ((1 << 31) - 1)) | (1 << 31))
            key >>= 31
        words.append(key)
    return words


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from ``keys`` (e.g. ``(run seed, stream id, index)``), all ``>= 0``; call it through
    ``stream_seed``, which fixes the stream's id and number of indices."""
    if any(k < 0 for k in keys):
        raise SettingError(f"seeds and indices must be >= 0, got {keys}")
    state = np.random.SeedSequence(entropy_words(keys)).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def stream_key(name: str, seed: int, *indices: int) -> tuple[int, ...]:
    """``(seed, id, *indices)`` of stream ``name`` of ``STREAMS``, checking the number of indices."""
    stream = STREAMS.get(name)
    if stream is None:
        raise KeyError(f"unknown random stream {name!r}; the streams are {', '.join(STREAMS)}")
    if len(indices) != len(stream.indices):
        raise TypeError(f"stream {name!r} takes the indices {stream.indices}, got {indices}")
    return (seed, stream.id, *indices)


def stream_seed(name: str, seed: int, *indices: int) -> int:
    """The seed of stream ``name`` (a key of ``STREAMS``) of run ``seed`` at ``indices``."""
    return derive_seed(*stream_key(name, seed, *indices))


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index``'s generator: its initial noise ``z_T`` and its stochastic sampler noise."""
    return stream_seed("sample", seed, index)


def group_seed(seed: int, group: int) -> int:
    """Seed of mixing group ``group``'s generator (Latent CutMix boxes and partners)."""
    return stream_seed("group", seed, group)


# The base of BatchNorm1d/2d/3d, SyncBatchNorm and the layers of converted TorchScript teachers; torch
# keeps it private, so it is named once, here.
BatchNormBase = nn.modules.batchnorm._BatchNorm


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` (any dimension), in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, BatchNormBase)]


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One seeded CPU generator per seed (CPU, so the same seed gives the same noise on any device)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Sorted dotted keys whose values differ between two (nested) config dicts; a missing key differs."""
    old, new = flatten(old), flatten(new)
    return sorted(k for k in set(old) | set(new) if old.get(k, UNSET) != new.get(k, UNSET))


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"a.b (1 -> 2), c ('<unset>' -> 3)"`` for the keys in which ``old`` and ``new`` differ."""
    old_flat, new_flat = flatten(old), flatten(new)
    return ", ".join(
        f"{k} ({old_flat.get(k, UNSET)!r} -> {new_flat.get(k, UNSET)!r})" for k in changed_keys(old, new)
    )
