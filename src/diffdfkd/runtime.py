"""The small helpers every stage shares: device, dtype, seed derivation, and "what changed" in a config.

- ``resolve_device("auto" | "cpu" | "cuda" | "cuda:<n>")``: ``auto`` is ``cuda:$LOCAL_RANK`` (torchrun)
  when CUDA is available, else ``cpu``.
- ``resolve_dtype("fp32" | "bf16" | "fp16")``.
- ``derive_seed(*keys)``: a 63-bit seed from a tuple of non-negative integers via numpy's
  ``SeedSequence`` (well mixed: no collisions between e.g. (seed 0, index 1000) and (seed 1, index 0),
  unlike ``seed + index``); ``sample_seed`` / ``group_seed`` are synthesis's two streams.
- ``changed_keys`` / ``describe_changes``: the dotted keys in which two (nested) configs differ, used
  wherever a folder made with another config is refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from diffdfkd.errors import UserError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLE_STREAM, GROUP_STREAM = 0, 1
UNSET = "<unset>"


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


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from ``keys`` (e.g. ``(run seed, stream, index)``), all ``>= 0``."""
    if any(k < 0 for k in keys):
        raise SettingError(f"seeds and indices must be >= 0, got {keys}")
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index``'s generator: its initial noise ``z_T`` and its stochastic sampler noise."""
    return derive_seed(seed, SAMPLE_STREAM, index)


def group_seed(seed: int, group: int) -> int:
    """Seed of mixing group ``group``'s generator (Latent CutMix boxes and partners)."""
    return derive_seed(seed, GROUP_STREAM, group)


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
