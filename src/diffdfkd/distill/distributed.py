"""Training under ``torchrun``: join the process group once, and give every rank rank 0's tensors."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """This process's ``rank`` among ``world`` training processes (1: not distributed)."""

    rank: int = 0
    world: int = 1


def join_process_group(device: torch.device) -> ProcessGroup:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (nccl on CUDA, gloo on CPU).

    A group this creates stays up for later calls in the process (re-creating one under torchrun
    hangs) and is destroyed at exit."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessGroup()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(dist.destroy_process_group)
    return ProcessGroup(dist.get_rank(), dist.get_world_size())


def broadcast(tensors: Iterable[torch.Tensor]) -> None:
    """Give every rank rank 0's values (in place)."""
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place)."""
    dist.all_reduce(tensor)
    return tensor
