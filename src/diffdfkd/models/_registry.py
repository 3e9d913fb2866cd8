"""The model registry, kept apart so the model modules can register without an import cycle."""

from __future__ import annotations

from torch import nn

from diffdfkd.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
