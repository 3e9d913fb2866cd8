"""The KD trainer: a teacher with cross-entropy on real data, a student with KD, in one loop.

``fit`` trains a model on in-memory tensors with a ``DistillConfig`` recipe. The task is the only
difference between the two uses: without a teacher it is supervised cross-entropy on the labels;
with one it is knowledge distillation (docs/method.md, stage 2)::

    loss = T^2 * KL(softmax(t / T) || softmax(s / T)) + ce_weight * CE(s, labels)

The teacher runs online on the same augmented view the student sees. Teacher logits cached with a
synthetic set (its manifest) describe the un-augmented images, so they are only valid for training
without augmentation (``crop_padding=0``, ``hflip=False``); this loop does not use them.

Each epoch ``out_dir`` gets ``last.safetensors`` (the weights to use: the EMA weights when
``ema_decay > 0``), ``state.pt`` (everything needed to resume), ``best_holdout.safetensors``,
``metrics.csv`` and TensorBoard events in ``tb/``. A resumed run ends with exactly the weights of an
uninterrupted one: every epoch draws its data order, augmentation and any dropout from random
streams derived from ``(seed, epoch, rank)``, so no RNG state has to be carried over.

The pieces live beside this loop: the tasks in ``distill.tasks``, the EMA and lr schedule in
``distill.schedule`` (which the other trainers reuse), the process group in ``distill.distributed``,
the checkpoint files in ``distill.checkpoint``, the data and result types in ``distill.data``.

Under ``torchrun`` (``WORLD_SIZE > 1``) ``fit`` joins the process group (gloo on CPU, nccl on CUDA),
wraps the model in ``DistributedDataParallel`` and gives each of the W processes ``batch_size / W``
images of every global batch; only rank 0 writes files, and all ranks return the same result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diffdfkd.config import DistillConfig, to_dict
from diffdfkd.distill.augment import Augment, build_augment
from diffdfkd.distill.checkpoint import STATE, checkpoint_run, load_state, save_epoch
from diffdfkd.distill.data import FitError, FitResult, Normalized, TensorData, check_inputs, split_holdout
from diffdfkd.distill.distributed import ProcessGroup, all_reduce_sum, broadcast, join_process_group
from diffdfkd.distill.schedule import ModelEma, build_optimizer, lr_factor
from diffdfkd.distill.tasks import DistillTask, SupervisedTask, Task
from diffdfkd.evaluate import predict_logits
from diffdfkd.runtime import resolve_device, stream_seed

# Re-exported: callers import the run's types and the checkpoint reader from here.
__all__ = ["FitError", "FitResult", "TensorData", "checkpoint_run", "fit", "split_holdout"]


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
    group = join_process_group(device)
    if holdout is not None and len(holdout) == 0:
        holdout = None
    loop = _build_loop(model, train, recipe, teacher, normalize, seed, device, group, data_id)
    check_inputs(loop.net, teacher, train, holdout, "student" if teacher is not None else "model")
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
    group: ProcessGroup
    signature: dict[str, Any]  # must match to resume


def _build_loop(
    model: nn.Module,
    train: TensorData,
    recipe: DistillConfig,
    teacher: nn.Module | None,
    normalize: tuple[Sequence[float], Sequence[float]] | None,
    seed: int,
    device: torch.device,
    group: ProcessGroup,
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
        broadcast(model.state_dict().values())
    if teacher is not None:
        teacher.to(device).eval()
        task: Task = DistillTask(teacher, recipe.temperature, recipe.ce_weight)
    else:
        task = SupervisedTask()
    steps_per_epoch = len(train) // recipe.batch_size
    optimizer = build_optimizer(model, recipe)
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
        start_epoch = load_state(loop, out_dir / STATE, result)
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
                broadcast(loop.model.buffers())
                if loop.ema is not None:
                    broadcast(loop.ema.module.buffers())
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
                save_epoch(loop, out_dir, epoch + 1, result, improved)
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
        len(loop.train), generator=torch.Generator().manual_seed(stream_seed("train_order", loop.seed, epoch))
    )
    order = order.to(loop.train.images.device)
    aug_generator = torch.Generator().manual_seed(stream_seed("train_augment", loop.seed, epoch, group.rank))
    local = recipe.batch_size // group.world
    autocast = recipe.amp and device.type == "cuda"
    sums: dict[str, torch.Tensor] = {}
    lr = 0.0
    loop.net.train()
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(stream_seed("train_torch", loop.seed, epoch, group.rank))
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
        all_reduce_sum(totals)
    means = (totals / (steps * group.world)).tolist()
    rate = steps * recipe.batch_size / seconds
    return dict(zip(sums, means, strict=True)) | {"lr": lr, "images_per_s": rate}
