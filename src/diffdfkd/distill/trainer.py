"""One training loop for the project: a teacher with cross-entropy on real data, a student with KD.

``fit`` trains a model on in-memory tensors with a ``DistillConfig`` recipe. The task is the only
difference between the two uses: without a teacher it is supervised cross-entropy on the labels;
with one it is knowledge distillation (METHOD.md stage 2)::

    loss = T^2 * KL(softmax(t / T) || softmax(s / T)) + ce_weight * CE(s, labels)

The teacher runs online on the same augmented view the student sees. Teacher logits cached with a
synthetic set (its manifest) describe the un-augmented images, so they are only valid for training
without augmentation (``crop_padding=0``, ``hflip=False``); this loop does not use them.

Each epoch ``out_dir`` gets ``last.safetensors`` (the weights to use: the EMA weights when
``ema_decay > 0``), ``state.pt`` (everything needed to resume), ``best_holdout.safetensors``,
``metrics.csv`` and TensorBoard events in ``tb/``. A resumed run ends with exactly the weights of an
uninterrupted one: every epoch draws its data order, augmentation and any dropout from random
streams derived from ``(seed, epoch, rank)``, so no RNG state has to be carried over.

Under ``torchrun`` (``WORLD_SIZE > 1``) ``fit`` joins the process group (gloo on CPU, nccl on CUDA),
wraps the model in ``DistributedDataParallel`` and gives each of the W processes ``batch_size / W``
images of every global batch; only rank 0 writes files, and all ranks return the same result.
"""

from __future__ import annotations

import atexit
import copy
import csv
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from diffdfkd.config import DistillConfig, to_dict
from diffdfkd.distill.augment import Augment, build_augment
from diffdfkd.distill.losses import kd_loss
from diffdfkd.errors import UserError
from diffdfkd.evaluate import predict_logits
from diffdfkd.files import load_checkpoint, replace_atomically, torch_bytes
from diffdfkd.runtime import changed_keys, derive_seed, describe_changes, resolve_device

STATE_FORMAT = 1
LAST, BEST, STATE, METRICS = "last.safetensors", "best_holdout.safetensors", "state.pt", "metrics.csv"

Losses = dict[str, torch.Tensor]


class FitError(UserError, ValueError):
    """Training cannot start or resume as asked; the message says why and what to change."""


# --- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorData:
    """A labelled image set in memory: ``images [N, C, H, W]`` float in [0, 1], ``labels [N]`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or not self.images.is_floating_point():
            raise FitError(
                f"images must be a float tensor [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != torch.long or len(self.labels) != len(self.images):
            raise FitError(
                f"labels must be an int64 tensor [N] with N = {len(self.images)}, got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorData:
        """The images and labels at ``index`` (a ``[M]`` index tensor)."""
        return TensorData(self.images[index], self.labels[index])


def split_holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into sorted ``(train_idx, holdout_idx)`` index tensors.

    The holdout gets ``round(n * fraction)`` items (at least one when ``fraction > 0``); not stratified.
    """
    if not 0.0 <= fraction < 1.0:
        raise FitError(f"holdout fraction must lie in [0, 1), got {fraction}")
    size = 0 if fraction == 0 else max(1, round(n * fraction))
    if size >= n:
        raise FitError(f"a holdout of {size} of {n} items leaves nothing to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size].sort().values


# --- tasks: one step's losses ---------------------------------------------------------------------------


class Task(Protocol):
    """``task(model, images [B, C, H, W], labels [B]) -> named losses``; ``"loss"`` is optimised,
    every entry is logged."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Losses: ...


class SupervisedTask:
    """Cross-entropy on the labels (teacher training, real-data baselines)."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        ce = F.cross_entropy(model(images).float(), labels)
        return {"loss": ce}


@dataclass
class DistillTask:
    """KD from a frozen ``teacher`` run on the same (augmented) images: ``kd + ce_weight * ce``."""

    teacher: nn.Module
    temperature: float
    ce_weight: float

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        student_logits = model(images)
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        ce = F.cross_entropy(student_logits.float(), labels)
        return {"loss": kd + self.ce_weight * ce, "kd": kd, "ce": ce}


# --- model helpers -----------------------------------------------------------------------------------


class Normalized(nn.Module):
    """``model((images - mean) / std)``: feeds a model that expects normalised inputs from [0, 1] images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


class ModelEma:
    """Exponential moving average of a model's weights: ``ema = decay * ema + (1 - decay) * w`` after
    every optimiser step, for parameters and float buffers (BatchNorm statistics); integer buffers
    are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema, current in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema.is_floating_point():
                ema.lerp_(current, 1.0 - self.decay)
            else:
                ema.copy_(current)


def lr_factor(recipe: DistillConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at optimiser step ``step`` (0-based): linear warmup over
    ``warmup_epochs``, then cosine to 0 or steps of ``lr_decay`` at ``milestones`` (fractions of the epochs)."""
    warmup = recipe.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "cosine":
        progress = (step - warmup) / max(1, recipe.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    epoch = step / steps_per_epoch
    passed = sum(epoch >= m * recipe.epochs for m in recipe.milestones)
    return recipe.lr_decay**passed


def _optimizer(model: nn.Module, recipe: DistillConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=False
        )
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _state_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# --- distributed ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1


def _join_process_group(device: torch.device) -> _Dist:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (nccl on CUDA, gloo on CPU).

    A group this creates stays up for later calls in the process (re-creating one under torchrun
    hangs) and is destroyed at exit."""
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(dist.destroy_process_group)
    return _Dist(dist.get_rank(), dist.get_world_size())


def _broadcast(tensors: Iterable[torch.Tensor]) -> None:
    """Give every rank rank 0's values (in place)."""
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


# --- results -------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What ``fit`` did: one ``history`` row per epoch (the ``metrics.csv`` columns) and the best holdout
    epoch. The reported result is the LAST epoch (``last``); ``best_*`` is for model selection on
    held-out synthetic data only."""

    out_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_holdout: float | None = None

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def holdout_top1(self) -> float | None:
        """Last epoch's holdout accuracy against the holdout labels (None without a holdout)."""
        return self.last.get("holdout_top1")

    @property
    def holdout_agreement(self) -> float | None:
        """Last epoch's agreement with the teacher's argmax on the holdout (KD only)."""
        return self.last.get("holdout_agreement")


# --- the loop ------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train: TensorData,
    *,
    recipe: DistillConfig,
    out_dir: str | Path,
    teacher: nn.Module | None = None,
    holdout: TensorData | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    data_id: str = "",
) -> FitResult:
    """Train ``model`` on ``train`` with ``recipe``; checkpoints and logs go to ``out_dir``.

    - ``teacher=None``: cross-entropy on ``train.labels`` (teacher training on real data).
      ``teacher`` given (a frozen module taking [0, 1] images, e.g. ``Teacher``): KD,
      ``kd_loss + recipe.ce_weight * CE``, the teacher run on the student's augmented view.
    - ``holdout``: evaluated after every epoch. ``holdout_top1`` is accuracy against its labels (a
      validation split for teacher training). With a teacher, ``holdout_agreement`` (agreement with
      the teacher's argmax) is also logged and is the metric that picks ``best_holdout.safetensors``:
      it is what KD optimises. For KD the holdout must be a held-out slice of the SYNTHETIC set,
      never the private test split. The final result is the last epoch regardless.
    - ``normalize=(mean, std)``: the model sees ``(images - mean) / std``; pass the teacher's values
      when training a teacher that ``Teacher`` will wrap. Students take [0, 1] images (None).
    - ``resume``: continue from ``out_dir/state.pt`` to exactly the weights of an uninterrupted run;
      refused (naming the keys) if the recipe, seed, task, normalisation, train-set size or
      ``data_id`` (the dataset's identity, e.g. ``SyntheticData.identity``) differ.
      Without ``resume`` an ``out_dir`` that already holds a checkpoint is refused, not overwritten.
    - ``stop_after``: stop once this many epochs are done (a time slice; the schedule still spans
      ``recipe.epochs``; continue later with ``resume=True``).

    The last partial batch of every epoch is dropped. On return ``model`` holds the last epoch's
    weights (the EMA weights when ``recipe.ema_decay > 0``), the same as ``out_dir/last.safetensors``.
    Raises ``FitError`` for data the model or teacher cannot take, for refused resumes, for a
    non-finite loss (training stops at that step; no weights with NaN or infinity are ever written)
    and when a checkpoint cannot be written (disk full: free space and resume).
    """
    device = resolve_device("auto" if device is None else device)
    group = _join_process_group(device)
    if holdout is not None and len(holdout) == 0:
        holdout = None
    loop = _build_loop(model, train, recipe, teacher, normalize, seed, device, group, data_id)
    _check_inputs(loop.net, teacher, train, holdout, "student" if teacher is not None else "model")
    return _run_epochs(loop, Path(out_dir), teacher, holdout, resume, stop_after, progress)


@dataclass
class _Loop:
    """The pieces of one run, shared by the epoch step, the checkpoint and the resume."""

    model: nn.Module  # the user's model: trained in place
    net: nn.Module  # what the step calls: model, with normalisation, DDP-wrapped when distributed
    final: nn.Module  # what is evaluated and saved: model, or its EMA copy (with normalisation)
    task: Task
    train: TensorData
    augment: Augment | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: ModelEma | None
    recipe: DistillConfig
    seed: int
    steps_per_epoch: int
    device: torch.device
    group: _Dist
    signature: dict[str, Any]  # must match to resume


def _build_loop(
    model: nn.Module,
    train: TensorData,
    recipe: DistillConfig,
    teacher: nn.Module | None,
    normalize: tuple[Sequence[float], Sequence[float]] | None,
    seed: int,
    device: torch.device,
    group: _Dist,
    data_id: str,
) -> _Loop:
    if seed < 0:
        raise FitError(f"seed must be >= 0, got {seed}")
    if recipe.batch_size % group.world:
        raise FitError(f"batch_size={recipe.batch_size} must be divisible by the {group.world} processes")
    if len(train) < recipe.batch_size:
        raise FitError(f"the train set ({len(train)} images) is smaller than one batch ({recipe.batch_size})")

    def with_normalize(module: nn.Module) -> nn.Module:
        return Normalized(module, *normalize).to(device) if normalize else module

    model.to(device)
    if group.world > 1:  # start every rank, and its EMA copy, from rank 0's initial weights
        _broadcast(model.state_dict().values())
    if teacher is not None:
        teacher.to(device).eval()
        task: Task = DistillTask(teacher, recipe.temperature, recipe.ce_weight)
    else:
        task = SupervisedTask()
    steps_per_epoch = len(train) // recipe.batch_size
    optimizer = _optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch)
    )
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    signature = to_dict(recipe) | {
        "seed": seed,
        "task": "kd" if teacher is not None else "ce",
        "normalize": [list(map(float, v)) for v in normalize] if normalize else None,
        "train_size": len(train),
        "data": data_id,
    }
    return _Loop(
        model=model,
        net=with_normalize(model),
        final=with_normalize(ema.module if ema is not None else model),
        task=task,
        train=train,
        augment=build_augment(recipe.crop_padding, recipe.hflip, recipe.crop_fill, recipe.color_jitter),
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        recipe=recipe,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
        device=device,
        group=group,
        signature=signature,
    )


def _check_inputs(
    net: nn.Module, teacher: nn.Module | None, train: TensorData, holdout: TensorData | None, role: str
) -> None:
    """Fail early, with a clear message, on data the model or teacher cannot take."""
    sample = train.images[:1].to(next(net.parameters()).device)
    name = type(net.model if isinstance(net, Normalized) else net).__name__
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(sample)
    except RuntimeError as error:
        raise FitError(
            f"{role} {name} cannot take images of shape {tuple(train.images.shape[1:])}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    finally:
        net.train(was_training)
    if out.ndim != 2:
        raise FitError(f"{role} {name} must return logits [B, K], got shape {tuple(out.shape)}")
    num_classes = out.shape[1]
    if teacher is not None:
        try:
            with torch.no_grad():
                teacher_classes = teacher(sample).shape[1]
        except RuntimeError as error:
            raise FitError(
                f"the teacher cannot take images of shape {tuple(train.images.shape[1:])}: "
                f"{str(error).splitlines()[0]}"
            ) from None
        if teacher_classes != num_classes:
            raise FitError(f"the teacher has {teacher_classes} classes but {role} {name} has {num_classes}")
    for part, data in (("train", train), ("holdout", holdout)):
        if data is None or len(data) == 0:
            continue
        if data.images.shape[1:] != train.images.shape[1:]:
            raise FitError(
                f"holdout images {tuple(data.images.shape[1:])} differ from train images "
                f"{tuple(train.images.shape[1:])}"
            )
        if data.labels.min() < 0 or data.labels.max() >= num_classes:
            raise FitError(
                f"{part} labels lie in [{int(data.labels.min())}, {int(data.labels.max())}] but {role} "
                f"{name} has {num_classes} classes"
            )
        low, high = float(data.images.min()), float(data.images.max())
        if low < 0.0 or high > 1.0:
            raise FitError(f"{part} images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]")


def _run_epochs(
    loop: _Loop,
    out_dir: Path,
    teacher: nn.Module | None,
    holdout: TensorData | None,
    resume: bool,
    stop_after: int | None,
    progress: bool,
) -> FitResult:
    """Train, evaluate, checkpoint and log epoch by epoch; see ``fit``."""
    recipe, group = loop.recipe, loop.group
    end_epoch = recipe.epochs if stop_after is None else min(stop_after, recipe.epochs)
    if end_epoch < 1:
        raise FitError(f"stop_after must be >= 1, got {stop_after}")
    result = FitResult(out_dir)
    start_epoch = 0
    if resume:
        start_epoch = _load_state(loop, out_dir / STATE, result)
    elif (out_dir / STATE).exists():
        raise FitError(f"{out_dir} already holds a checkpoint; resume it or choose another out_dir")

    teacher_preds = None
    if holdout is not None and teacher is not None:
        teacher_preds = predict_logits(teacher, holdout.images, device=loop.device).argmax(dim=1)
    if group.world > 1:
        ids = [loop.device] if loop.device.type == "cuda" else None
        loop.net = nn.parallel.DistributedDataParallel(loop.net, device_ids=ids)

    writer = None
    if group.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    bar = tqdm(
        total=max(0, end_epoch - start_epoch) * loop.steps_per_epoch,
        disable=not progress or group.rank != 0,
        unit="step",
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch, end_epoch):
            started = time.perf_counter()
            train_stats = _train_epoch(loop, epoch, bar)
            images_per_s = train_stats.pop("images_per_s")
            row: dict[str, float] = {"epoch": epoch + 1} | train_stats  # the named losses, lr
            if group.world > 1:
                # BatchNorm statistics drift apart on each rank's shard: keep rank 0's.
                _broadcast(loop.model.buffers())
                if loop.ema is not None:
                    _broadcast(loop.ema.module.buffers())
            if holdout is not None:
                preds = predict_logits(loop.final, holdout.images, device=loop.device).argmax(dim=1)
                row["holdout_top1"] = float((preds == holdout.labels.cpu()).float().mean())
                if teacher_preds is not None:
                    row["holdout_agreement"] = float((preds == teacher_preds).float().mean())
            row |= {"images_per_s": images_per_s, "seconds": time.perf_counter() - started}
            result.history.append(row)
            metric = row.get("holdout_agreement", row.get("holdout_top1"))
            improved = metric is not None and (result.best_holdout is None or metric > result.best_holdout)
            if improved:
                result.best_epoch, result.best_holdout = epoch + 1, metric
            if writer is not None:
                _save_epoch(loop, out_dir, epoch + 1, result, improved)
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
                if progress:
                    summary = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
                    bar.write(f"epoch {epoch + 1}/{recipe.epochs} {summary}")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if loop.ema is not None:
        loop.model.load_state_dict(loop.ema.module.state_dict())
    return result


def _train_epoch(loop: _Loop, epoch: int, bar: tqdm) -> dict[str, float]:
    """One epoch; returns the mean of each named loss over all ranks, the last lr and images/s."""
    recipe, group, device, steps = loop.recipe, loop.group, loop.device, loop.steps_per_epoch
    # The data order is the same on every rank (each takes its slice of every global batch);
    # augmentation and dropout draw from per-rank streams. All derive from (seed, epoch).
    order = torch.randperm(
        len(loop.train), generator=torch.Generator().manual_seed(derive_seed(loop.seed, epoch, 0))
    )
    order = order.to(loop.train.images.device)
    aug_generator = torch.Generator().manual_seed(derive_seed(loop.seed, epoch, 1 + group.rank))
    local = recipe.batch_size // group.world
    autocast = recipe.amp and device.type == "cuda"
    sums: dict[str, torch.Tensor] = {}
    lr = 0.0
    loop.net.train()
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(loop.seed, epoch, 1_000_000 + group.rank))
        for step in range(steps):
            start = step * recipe.batch_size + group.rank * local
            index = order[start : start + local]
            images = loop.train.images[index].to(device, non_blocking=True)
            labels = loop.train.labels[index].to(device, non_blocking=True)
            if loop.augment is not None:
                images = loop.augment(images, aug_generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                losses = loop.task(loop.net, images, labels)
            if not torch.isfinite(losses["loss"]):
                raise FitError(
                    f"the loss is {losses['loss'].item()} at epoch {epoch + 1}, step {step + 1}: training "
                    f"diverged (lower distill.lr, check the data); nothing of this epoch was saved"
                )
            loop.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            lr = loop.optimizer.param_groups[0]["lr"]
            loop.optimizer.step()
            loop.scheduler.step()
            if loop.ema is not None:
                loop.ema.update(loop.model)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
            bar.update()
            if step % 10 == 0 or step == steps - 1:
                rate = (step + 1) * recipe.batch_size / (time.perf_counter() - started)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses['loss'].item():.4f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - started
    totals = torch.stack(list(sums.values()))
    if group.world > 1:
        dist.all_reduce(totals)
    means = (totals / (steps * group.world)).tolist()
    rate = steps * recipe.batch_size / seconds
    return dict(zip(sums, means, strict=True)) | {"lr": lr, "images_per_s": rate}


# --- checkpoints ---------------------------------------------------------------------------------------


def _save_epoch(loop: _Loop, out_dir: Path, epoch: int, result: FitResult, improved: bool) -> None:
    """Write the checkpoint, the weights and the metrics of a finished epoch, each file atomically.

    ``state.pt`` holds plain tensors, numbers, strings, lists and dicts only (it loads with
    ``weights_only=True``); it alone is read to resume. The safetensors files hold the weights
    evaluated (EMA or raw), without any normalisation wrapper. Weights with NaN or infinity are
    refused, and a failed write (disk full) is a ``FitError`` saying that a rerun resumes."""
    weights = _state_cpu(loop.ema.module if loop.ema is not None else loop.model)
    broken = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise FitError(
            f"epoch {epoch}: the weights {broken[:4]} hold NaN or infinity (training diverged; lower "
            f"distill.lr); they were not saved"
        )
    try:
        _write_epoch(loop, out_dir, epoch, result, improved, weights)
    except OSError as error:
        raise FitError(
            f"could not write the checkpoint of epoch {epoch} into {out_dir}: {error} (disk full or "
            f"not writable?); free space and rerun the same command: it resumes from the last saved epoch"
        ) from error


def _write_epoch(
    loop: _Loop,
    out_dir: Path,
    epoch: int,
    result: FitResult,
    improved: bool,
    weights: dict[str, torch.Tensor],
) -> None:
    state = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "run": loop.signature,
        "model": _state_cpu(loop.model),
        "ema": _state_cpu(loop.ema.module) if loop.ema is not None else None,
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),  # lr_lambdas: [None], the function is rebuilt
        "history": result.history,
        "best": {"epoch": result.best_epoch, "metric": result.best_holdout},
    }
    # serialised in memory, then written plainly: a full disk is an OSError (torch's and safetensors'
    # own file writers raise other types), and the files get the umask's mode like every other
    files = {STATE: torch_bytes(state), LAST: save(weights)} | ({BEST: save(weights)} if improved else {})
    for name, data in files.items():
        replace_atomically(out_dir / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
    columns = list(dict.fromkeys(key for row in result.history for key in row))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(result.history)

    replace_atomically(out_dir / METRICS, write_csv)


def checkpoint_run(out_dir: str | Path) -> dict[str, Any] | None:
    """The run signature (recipe, seed, task, ``data`` ...) of ``out_dir``'s checkpoint, or None
    without one: what a resume must match."""
    path = Path(out_dir) / STATE
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FitError(f"{path} is not a diffdfkd training checkpoint (format {STATE_FORMAT})")
    return state["run"]


def _load_state(loop: _Loop, path: Path, result: FitResult) -> int:
    """Restore a checkpoint written by ``_save_epoch``; returns the number of epochs it completed."""
    if not path.is_file():
        raise FitError(f"nothing to resume: {path} does not exist; start without resume")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FitError(f"{path} is not a diffdfkd training checkpoint (format {STATE_FORMAT})")
    saved, current = state["run"], loop.signature
    if changed_keys(saved, current):
        details = describe_changes(saved, current)
        raise FitError(
            f"cannot resume {path.parent}: the run differs from the checkpoint's in {details}; "
            f"use the checkpoint's settings or start a new out_dir"
        )
    loop.model.load_state_dict(state["model"])
    if loop.ema is not None:
        loop.ema.module.load_state_dict(state["ema"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    result.history = list(state["history"])
    result.best_epoch, result.best_holdout = state["best"]["epoch"], state["best"]["metric"]
    return int(state["epoch"])
