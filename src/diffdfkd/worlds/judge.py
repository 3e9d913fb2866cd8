"""The digits worlds' judges: classifiers trained on PUBLIC MNIST renderings, used only to measure.

They are never teachers and never guide synthesis; none of them sees PRIVATE data.

- The digit judge of a world (``load_judge(world)``): ``digits-mnist``'s was trained on plain MNIST
  (``weights/digits_judge.safetensors``), ``digits``' on MNIST in every look of
  :data:`diffdfkd.worlds.looks.LOOKS` (``weights/digits_broad_judge.safetensors``). Its penultimate
  features (``[B, 128]``, after global average pooling) are the space in which the generator bench
  measures Frechet distance and diversity.
- The look classifier (``load_look_classifier()``, ``weights/digits_looks.safetensors``): which of the
  looks an image is in. A data-free diagnostic: :func:`look_fractions` of a synthetic set shows whether
  guidance moved the samples to the teacher's look.

All are ``cnn_small`` in fp16, trained by one loop (:func:`train_judge`) and rebuilt by
:func:`build_judge`.
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

from diffdfkd.distill.augment import RandomAffine, RandomCrop, RandomHFlip
from diffdfkd.evaluate import evaluate
from diffdfkd.models.teacher import Teacher, export_weights, load_teacher
from diffdfkd.models.zoo import create_model
from diffdfkd.registry import UnknownNameError
from diffdfkd.worlds import emoji
from diffdfkd.worlds.digits import CLASS_NAMES, load_public
from diffdfkd.worlds.looks import LOOKS, render_looks

JUDGE_ARCH = "cnn_small"
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
SHIPPED_JUDGE = WEIGHTS / "digits_judge.safetensors"
# which classifier: (what it predicts, the looks it is trained on, shipped weights)
JUDGES = {
    "digits-mnist": ("digit", ("plain",), SHIPPED_JUDGE),
    "digits": ("digit", LOOKS, WEIGHTS / "digits_broad_judge.safetensors"),
    "looks": ("look", LOOKS, WEIGHTS / "digits_looks.safetensors"),
    "emoji": ("class", emoji.PUBLIC_STYLES, WEIGHTS / "emoji_judge.safetensors"),
    "emoji-styles": ("style", emoji.PUBLIC_STYLES, WEIGHTS / "emoji_styles.safetensors"),
}
# MNIST's pixel mean and std (of the 32x32 padded images), so the judge sees standardised inputs
MEAN, STD = 0.1, 0.3
EMOJI_MEAN, EMOJI_STD = 0.8, 0.3  # about the PUBLIC emoji's (white backgrounds)


def _class_names(target: str, looks: tuple[str, ...]) -> tuple[str, ...]:
    return {"digit": CLASS_NAMES, "class": emoji.CLASS_NAMES}.get(target, looks)


def _norm(target: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m, s = (EMOJI_MEAN, EMOJI_STD) if target in ("class", "style") else (MEAN, STD)
    return (m,) * 3, (s,) * 3


def _new_model(n_classes: int) -> nn.Module:
    return create_model(JUDGE_ARCH, num_classes=n_classes, in_channels=3)


# Random rotation (+-10 deg), scale (+-10 %) and shift (+-2 px); no flips.
AUGMENT = RandomAffine(max_rotation_deg=math.degrees(0.175), max_scale=0.1, max_shift_px=2.0)


def render_random_looks(
    images: torch.Tensor, looks: tuple[str, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each of ``images [N, 3, 32, 32]`` in a look drawn uniformly from ``looks``; returns the images and
    the looks ``[N]`` (indices into ``looks``). With one look nothing is drawn from ``generator``."""
    n = images.shape[0]
    if len(looks) == 1:
        chosen = torch.zeros(n, dtype=torch.long)
    else:
        chosen = torch.randint(len(looks), (n,), generator=generator)
    world_looks = torch.tensor([LOOKS.index(look) for look in looks])[chosen]
    return render_looks(images, world_looks), chosen


def _fit(
    images: torch.Tensor,
    targets: torch.Tensor,
    n_classes: int,
    augment,
    *,
    mean: float,
    std: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    render=None,
) -> nn.Module:
    """The judges' one training loop: ``cnn_small`` with Adam + one-cycle cosine and cross-entropy with
    label smoothing 0.05 on ``augment``-ed batches of ``images`` (``render``, if given, maps a batch to
    its images and targets, for looks drawn per batch)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _new_model(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, dynamic_ncols=True):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = augment(images[idx], generator)
            x, y = render(x, targets[idx], generator) if render is not None else (x, targets[idx])
            loss = F.cross_entropy(model((x - mean) / std), y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


def train_judge(
    *,
    target: str = "digit",
    looks: tuple[str, ...] = ("plain",),
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
) -> Teacher:
    """Train a classifier of ``target`` ("digit" or "look") on PUBLIC MNIST "train" (4,000 images),
    each image of each batch affinely augmented then rendered in a look drawn from ``looks``."""
    if target not in ("digit", "look"):
        raise ValueError(f"target must be 'digit' or 'look', got {target!r}")
    images, labels = load_public("train")
    names = _class_names(target, looks)

    def render(x, y, generator):
        x, look = render_random_looks(x, looks, generator)
        return x, (y if target == "digit" else look)

    model = _fit(
        images, labels, len(names), AUGMENT, mean=MEAN, std=STD, epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, desc=f"{target} classifier", render=render,
    )  # fmt: skip
    return Teacher(model, input_size=32, in_channels=3, mean=(MEAN,) * 3, std=(STD,) * 3, class_names=names)


def _emoji_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The emoji judges' augmentation: a 1-pixel shift (white padding) and a horizontal flip. No
    rotation or scaling: their resampling blurs the very texture that tells the styles apart (the style
    classifier reached 0.79 on held-out stems with the digits' affine, 0.94 with this)."""
    return RandomHFlip()(RandomCrop(1, fill=1.0)(images, generator), generator)


def train_emoji_judge(target: str, *, epochs: int = 40, seed: int = 0) -> Teacher:
    """Train the emoji world's class judge (``target`` "class") or style classifier ("style") on the
    PUBLIC "train" stems of every PUBLIC style."""
    images, labels, styles = emoji.load_public_styled("train")
    names = emoji.CLASS_NAMES if target == "class" else emoji.PUBLIC_STYLES
    model = _fit(
        images, labels if target == "class" else styles, len(names), _emoji_augment, mean=EMOJI_MEAN,
        std=EMOJI_STD, epochs=epochs, batch_size=128, lr=3e-3, seed=seed, desc=f"emoji {target} classifier",
    )  # fmt: skip
    mean, std = (EMOJI_MEAN,) * 3, (EMOJI_STD,) * 3
    return Teacher(model, input_size=32, in_channels=3, mean=mean, std=std, class_names=names)


def load_judge(name: str = "digits-mnist", path: str | os.PathLike | None = None) -> Teacher:
    """The classifier ``name`` of :data:`JUDGES` (a world's digit judge, or "looks"), from ``path``
    (default: its shipped weights): a frozen ``Teacher`` that takes images ``[B, 3, 32, 32]`` in [0, 1]
    and standardises them itself."""
    if name not in JUDGES:
        raise UnknownNameError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}")
    target, looks, shipped = JUDGES[name]
    mean, std = _norm(target)
    return load_teacher(
        JUDGE_ARCH, Path(path) if path is not None else shipped, class_names=_class_names(target, looks),
        mean=mean, std=std,
    )  # fmt: skip


def load_look_classifier(path: str | os.PathLike | None = None) -> Teacher:
    """The shipped look classifier (outputs ``[B, len(LOOKS)]`` logits, one per look)."""
    return load_judge("looks", path)


@torch.no_grad()
def look_fractions(classifier: Teacher, images: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """The fraction of ``images [N, 3, 32, 32]`` (in [0, 1]) the look classifier puts in each look."""
    logits = torch.cat([classifier(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    counts = torch.bincount(logits.argmax(1), minlength=len(classifier.class_names))
    return {
        look: float(c) / max(1, len(images))
        for look, c in zip(classifier.class_names, counts.tolist(), strict=True)
    }


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


def build_judge(name: str, path: str | os.PathLike | None = None, *, seed: int = 0) -> tuple[Path, dict]:
    """Train, save (fp16) and evaluate the classifier ``name`` of :data:`JUDGES` on PUBLIC "test"
    rendered in each of its looks (seeded); returns (path, metrics)."""
    if name not in JUDGES:
        raise UnknownNameError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}")
    target, looks, shipped = JUDGES[name]
    start = time.perf_counter()
    if target in ("class", "style"):
        judge = train_emoji_judge(target, seed=seed)
    else:
        judge = train_judge(target=target, looks=looks, epochs=12 if target == "digit" else 20, seed=seed)
    seconds = time.perf_counter() - start
    path = export_weights(judge.model, path if path is not None else shipped, half=True)
    reloaded = load_judge(name, path)  # measure what is shipped: the fp16 weights
    per_look = {}
    if target in ("class", "style"):
        images, labels, styles = emoji.load_public_styled("test")
        for index, style in enumerate(looks):
            keep = styles == index
            truth = labels[keep] if target == "class" else styles[keep]
            per_look[style] = judge_accuracy(reloaded, images[keep], truth)
    else:
        images, labels = load_public("test")
        for index, look in enumerate(looks):
            rendered = render_looks(images, torch.full((len(images),), LOOKS.index(look)))
            truth = labels if target == "digit" else torch.full_like(labels, index)
            per_look[look] = judge_accuracy(reloaded, rendered, truth)
    metrics = {
        "name": name,
        "predicts": target,
        "looks": list(looks),
        "public_test_accuracy_per_look": per_look,
        "public_test_accuracy": sum(per_look.values()) / len(per_look),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "size_bytes": path.stat().st_size,
    }
    return path, metrics
