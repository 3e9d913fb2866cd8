"""The digits world's judge: a classifier trained on PUBLIC MNIST, used only to measure the generator.

It is never a teacher and never guides synthesis. ``load_judge()`` returns the shipped judge
(``weights/digits_judge.safetensors``, fp16); ``train_judge()`` rebuilds it from PUBLIC "train".
Its penultimate features (``[B, 128]``, after global average pooling) are the space in which the
generator bench measures Frechet distance and diversity.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffdfkd.distill.augment import RandomAffine
from diffdfkd.evaluate import evaluate
from diffdfkd.models.teacher import Teacher, export_weights, load_teacher
from diffdfkd.models.zoo import create_model
from diffdfkd.worlds.digits import CLASS_NAMES, load_public

JUDGE_ARCH = "cnn_small"
SHIPPED_JUDGE = Path(__file__).resolve().parent.parent / "weights" / "digits_judge.safetensors"
# MNIST's pixel mean and std (of the 32x32 padded images), so the judge sees standardised inputs
MEAN, STD = 0.1, 0.3


def _new_model() -> nn.Module:
    return create_model(JUDGE_ARCH, num_classes=len(CLASS_NAMES), in_channels=3)


# Random rotation (+-10 deg), scale (+-10 %) and shift (+-2 px); no flips.
AUGMENT = RandomAffine(max_rotation_deg=math.degrees(0.175), max_scale=0.1, max_shift_px=2.0)


def train_judge(*, epochs: int = 12, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> Teacher:
    """Train the judge on PUBLIC MNIST "train" (4,000 images), Adam + one-cycle cosine, light affine aug."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_public("train")
    model = _new_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(epochs), desc="judge", dynamic_ncols=True):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = (AUGMENT(images[idx], generator) - MEAN) / STD
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return Teacher(
        model, input_size=32, in_channels=3, mean=(MEAN,) * 3, std=(STD,) * 3, class_names=CLASS_NAMES
    )


def load_judge(path: str | os.PathLike | None = None) -> Teacher:
    """The judge (default: the shipped ``weights/digits_judge.safetensors``): a frozen ``Teacher`` that
    takes images ``[B, 3, 32, 32]`` in [0, 1] and standardises them itself."""
    return load_teacher(
        JUDGE_ARCH, Path(path) if path is not None else SHIPPED_JUDGE, class_names=CLASS_NAMES,
        mean=(MEAN,) * 3, std=(STD,) * 3,
    )  # fmt: skip


@torch.no_grad()
def judge_outputs(
    judge: Teacher, images: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, 10]`` and penultimate features ``[N, D]`` of ``images [N, 3, 32, 32]`` in [0, 1]."""
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        f = judge.model.features(judge.preprocess(images[i : i + batch_size])).flatten(1)
        feats.append(f)
        logits.append(judge.model.classifier(f))
    return torch.cat(logits), torch.cat(feats)


def judge_accuracy(judge: Teacher, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the judge on ``images [N, 3, 32, 32]`` in [0, 1] against ``labels [N]``."""
    return evaluate(judge, images, labels)["top1"]


def build_judge(path: str | os.PathLike = SHIPPED_JUDGE, *, seed: int = 0) -> tuple[Path, dict]:
    """Train, save (fp16) and evaluate the judge on PUBLIC "test"; returns (path, metrics)."""
    start = time.perf_counter()
    judge = train_judge(seed=seed)
    seconds = time.perf_counter() - start
    path = export_weights(judge.model, path, half=True)
    reloaded = load_judge(path)  # measure what is shipped: the fp16 weights
    images, labels = load_public("test")
    metrics = {
        "public_test_accuracy": judge_accuracy(reloaded, images, labels),
        "train_seconds": round(seconds, 1),
        "size_bytes": path.stat().st_size,
    }
    return path, metrics
