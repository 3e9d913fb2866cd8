"""Model zoo: CIFAR-style (32x32) classifiers used as teachers and students.

``resnet*``, ``wrn_*`` and ``vgg11_bn`` keep the state-dict layout of the CMI / Fast-Datafree
``datafree/models/classifiers`` definitions, so their published CIFAR teacher checkpoints load with
``load_state_dict(strict=True)``. ``lenet5`` and ``cnn_small`` are tiny CPU-trainable nets with BatchNorm.
"""

from __future__ import annotations

from torch import nn

from diffdfkd.models import cnn, resnet, vgg, wrn  # noqa: F401  (imported to register the models)
from diffdfkd.models._registry import MODELS

__all__ = ["MODELS", "create_model", "list_models"]


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build the registered model ``name``; it maps ``[B, in_channels, 32, 32]`` to logits ``[B, num_classes]``.

    Raises ``KeyError`` (listing the known names) for an unknown name and ``ValueError`` for a
    non-positive ``num_classes`` or ``in_channels``.
    """
    factory = MODELS.get(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    return factory(num_classes=num_classes, in_channels=in_channels)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return MODELS.names()
