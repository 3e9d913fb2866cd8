"""Stage 2: knowledge distillation on a fixed synthetic set, and the one training loop for the project."""

from diffdfkd.distill.augment import Compose, RandomCrop, RandomHFlip, build_augment
from diffdfkd.distill.losses import kd_loss
from diffdfkd.distill.trainer import (
    DistillTask,
    FitError,
    FitResult,
    SupervisedTask,
    TensorData,
    fit,
    lr_factor,
    split_holdout,
)

__all__ = [
    "Compose",
    "DistillTask",
    "FitError",
    "FitResult",
    "RandomCrop",
    "RandomHFlip",
    "SupervisedTask",
    "TensorData",
    "build_augment",
    "fit",
    "kd_loss",
    "lr_factor",
    "split_holdout",
]
