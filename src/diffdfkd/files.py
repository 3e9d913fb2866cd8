"""Writing files so that a crash or a kill never leaves half of one; reading our own checkpoints
without running code; the lock that keeps a second writer out of a folder."""

from __future__ import annotations

import fcntl
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffdfkd.errors import UserError

LOCK_FILE = ".lock"


class CheckpointReadError(UserError, ValueError):
    """A checkpoint of ours that does not load as plain tensors and containers (damaged, or planted)."""


class FolderBusyError(UserError, RuntimeError):
    """Another process is writing the folder."""


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    The temporary name carries the process id, so processes writing the same file (shards) never
    share one; on failure it is removed and the error propagates.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` in memory: written to disk by a plain write, a full disk is an ``OSError``
    (torch's own file writer reports it as a ``RuntimeError``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The one loader of every checkpoint diffdfkd writes (training and adaptation state): ``torch.load``
    with ``weights_only=True``, so a planted pickle never runs code. Raises ``CheckpointReadError``
    (delete the file to start afresh) for anything that does not load that way."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types on a damaged or foreign file
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointReadError(
            f"{path} cannot be read as a diffdfkd checkpoint ({type(error).__name__}: {detail}); it is "
            f"damaged or not ours (code in it is never run): delete it to start afresh"
        ) from None


class FolderLock:
    """``<folder>/.lock``, locked with POSIX record locks (``lockf``): held by this process until
    ``release`` or its exit (a crash or a kill frees it). Writers of the same thing share it
    (``share``); a writer that changes the folder holds it alone (``hold``)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._file = open(self.path, "a+")  # noqa: SIM115 - kept open while held

    def _try(self, mode: int, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.lockf(self._file, mode | fcntl.LOCK_NB)
                return True
            except OSError:  # EACCES or EAGAIN: another process holds it
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def hold(self, wait_s: float = 2.0) -> bool:
        """Lock it alone (waiting up to ``wait_s`` for another process's short preparation)."""
        return self._try(fcntl.LOCK_EX, wait_s)

    def share(self, wait_s: float = 2.0) -> bool:
        """Lock it beside other writers of the same thing (converts a held lock)."""
        return self._try(fcntl.LOCK_SH, wait_s)

    def release(self) -> None:
        self._file.close()  # closing drops this process's locks on the file
