"""A training run's files, each written atomically after every epoch, and the resume from them.

``state.pt`` holds plain tensors, numbers, strings, lists and dicts only (it loads with
``weights_only=True``) and alone is read to resume: the model, its EMA, the optimiser and the lr
schedule's state, the history and the run's signature (recipe, seed, task, data), which a resume must
match. ``last.safetensors`` / ``best_holdout.safetensors`` hold the weights evaluated (EMA or raw),
``metrics.csv`` one row per epoch.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save
from torch import nn

from diffdfkd.distill.data import FitError, FitResult
from diffdfkd.distill.schedule import ModelEma
from diffdfkd.files import load_checkpoint, replace_atomically, torch_bytes
from diffdfkd.runtime import changed_keys, describe_changes

STATE_FORMAT = 1
LAST, BEST, STATE, METRICS = "last.safetensors", "best_holdout.safetensors", "state.pt", "metrics.csv"


class Checkpointed(Protocol):
    """The parts of a run that its checkpoint saves and restores."""

    model: nn.Module
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    signature: dict[str, Any]


def state_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_epoch(loop: Checkpointed, out_dir: Path, epoch: int, result: FitResult, improved: bool) -> None:
    """Write the checkpoint, the weights and the metrics of a finished epoch, each file atomically.

    ``state.pt`` holds plain tensors, numbers, strings, lists and dicts only (it loads with
    ``weights_only=True``); it alone is read to resume. The safetensors files hold the weights
    evaluated (EMA or raw), without any normalisation wrapper. Weights with NaN or infinity are
    refused, and a failed write (disk full) is a ``FitError`` saying that a rerun resumes."""
    weights = state_cpu(loop.ema.module if loop.ema is not None else loop.model)
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
    loop: Checkpointed,
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
        "model": state_cpu(loop.model),
        "ema": state_cpu(loop.ema.module) if loop.ema is not None else None,
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


def load_state(loop: Checkpointed, path: Path, result: FitResult) -> int:
    """Restore a checkpoint written by ``save_epoch``; returns the number of epochs it completed."""
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
