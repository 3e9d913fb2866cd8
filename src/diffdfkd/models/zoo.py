"""The table of zoo models by name, and ``create_model`` / ``list_models``.

``resnet*``, ``wrn_*`` and ``vgg11_bn`` keep the state-dict layout of the CMI / Fast-Datafree
``datafree/models/classifiers`` definitions, so their published CIFAR teacher checkpoints load with
``load_state_dict(strict=True)``. ``lenet5`` and ``cnn_small`` are tiny CPU-trainable nets with BatchNorm.
"""

from __future__ import annotations

from torch import nn

from diffdfkd.models.cnn import cnn_small, lenet5
from diffdfkd.models.resnet import resnet18, resnet34
from diffdfkd.models.vgg import vgg11_bn
from diffdfkd.models.wrn import wrn_factory
from diffdfkd.registry import Registry

MODELS: Registry[nn.Module] = Registry(
    "model",
    {
        "lenet5": lenet5,
        "cnn_small": cnn_small,
        "resnet18": resnet18,
        "resnet34": resnet34,
        "vgg11_bn": vgg11_bn,
        "wrn_16_1": wrn_factory(16, 1),
        "wrn_16_2": wrn_factory(16, 2),
        "wrn_40_1": wrn_factory(40, 1),
        "wrn_40_2": wrn_factory(40, 2),
    },
)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build the zoo model ``name``; it maps ``[B, in_channels, 32, 32]`` to logits ``[B, num_classes]``.

    Raises ``UnknownNameError`` (listing the known names) for an unknown name and ``ValueError`` for a
    non-positive ``num_classes`` or ``in_channels``.
    """
    factory = MODELS.get(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    return factory(num_classes=num_classes, in_channels=in_channels)


def list_models() -> list[str]:
    """Sorted names of all zoo models."""
    return MODELS.names()
