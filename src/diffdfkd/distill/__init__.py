"""Stage 2: knowledge distillation on a fixed synthetic set (``fit``), and the training helpers every
trainer shares (``ModelEma``, ``warmup_cosine``, ``lr_factor``)."""

from diffdfkd.distill.augment import Compose, RandomCrop, RandomHFlip, build_augment
from diffdfkd.distill.data import FitError, FitResult, TensorData, split_holdout
from diffdfkd.distill.losses import kd_loss
from diffdfkd.distill.schedule import ModelEma, lr_factor, warmup_cosine
from diffdfkd.distill.tasks import DistillTask, SupervisedTask
from diffdfkd.distill.trainer import fit

__all__ = [
    "Compose",
    "DistillTask",
    "FitError",
    "FitResult",
    "ModelEma",
    "RandomCrop",
    "RandomHFlip",
    "SupervisedTask",
    "TensorData",
    "build_augment",
    "fit",
    "kd_loss",
    "lr_factor",
    "split_holdout",
    "warmup_cosine",
]
