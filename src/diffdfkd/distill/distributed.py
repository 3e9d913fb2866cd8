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


# The works of the latest collective call, kept until the next call (the last ones until the
# interpreter's own teardown). A work holds its tensors, and whoever drops the last reference to it
# frees them, which takes the GIL: were that one of gloo's worker threads while Python is
# finalizing (a rank that exits right after its last collective), the process would abort with
# "terminate called without an active exception". Held here, the main thread frees them.
_latest_works: list[dist.Work] = []


def _wait_and_hold(works: list[dist.Work]) -> None:
    for work in works:
        work.wait()
    _latest_works[:] = works


def broadcast(tensors: Iterable[torch.Tensor]) -> None:
    """Give every rank rank 0's values (in place)."""
    _wait_and_hold([dist.broadcast(tensor.data, src=0, async_op=True) for tensor in tensors])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place)."""
    _wait_and_hold([dist.all_reduce(tensor, async_op=True)])
    return tensor
