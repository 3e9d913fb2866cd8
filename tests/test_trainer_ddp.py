"""``fit`` under PyTorch's own launcher: 2 CPU processes (gloo) via ``torch.distributed.run``.

Each rank starts from different initial weights (DDP must broadcast rank 0's), trains a tiny model
with KD and augmentation, with and without EMA, and writes a checksum of its final weights and its
history; the ranks must agree with each other and with the ``last.safetensors`` that only rank 0 wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    import torch
    from torch import nn

    from diffdfkd.config import DistillConfig
    from diffdfkd.distill import TensorData, fit

    def tiny(seed):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        )

    def checksum(state):
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(key.encode() + state[key].detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 3
    images = 0.3 * torch.rand(64, 3, 8, 8, generator=g)
    images[torch.arange(64), labels] += 0.6
    data = TensorData(images.clamp(0, 1), labels)
    report = {}
    for ema_decay in (0.5, 0.0):  # the first fit joins the process group, the second reuses it
        recipe = DistillConfig(epochs=2, batch_size=16, lr=0.1, crop_padding=1, ema_decay=ema_decay, amp=False)
        model = tiny(100 + rank)  # different on each rank: DDP must start everyone from rank 0's weights
        result = fit(model, data.subset(torch.arange(48)), holdout=data.subset(torch.arange(48, 64)),
                     teacher=tiny(7).eval(), recipe=recipe, out_dir=out / f"ema{ema_decay}", seed=3,
                     progress=False)
        history = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
                   for row in result.history]
        report[f"ema{ema_decay}"] = {"weights": checksum(model.state_dict()), "history": history}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    """
)

pytestmark = pytest.mark.slow  # torchrun subprocesses (DDP)


def _checksum(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # HF_HUB_OFFLINE: conftest.py
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    # A session of its own, so that a hang can be ended with all the processes it started.
    launcher = subprocess.Popen(
        [*command, str(script), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = launcher.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        raise
    assert launcher.returncode == 0, stderr[-3000:]

    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    for name, report in rank0.items():
        assert [row["epoch"] for row in report["history"]] == [1, 2]
        run = tmp_path / name
        assert report["weights"] == _checksum(load_file(str(run / "last.safetensors")))
        assert len((run / "metrics.csv").read_text().splitlines()) == 3  # one writer: header + 2 epochs
        assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp files left
