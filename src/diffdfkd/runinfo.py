"""What ran: the resolved config, package versions and git SHA, written into every output folder."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
import yaml

from diffdfkd import __version__
from diffdfkd.config import to_dict


def git_sha() -> str:
    """The git SHA of the source tree this package runs from, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's ``cpuinfo``, else what ``platform`` knows, else 'unknown'):
    two CPUs with the same torch capability can still round differently (math libraries pick code paths
    by CPU model), so the capability alone does not say whether a run should repeat."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_info(config: Any) -> dict[str, Any]:
    """Versions, git SHA, seed and the CPU kernels torch picked, for reproducibility: a run repeats
    byte for byte on the same kernels, while another CPU's (e.g. AVX2 against AVX512) round floats
    differently, and the long optimisations of synthesis can carry those last bits into the images."""
    return {
        "diffdfkd": __version__,
        "git_sha": git_sha(),
        "seed": getattr(config, "seed", None),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
    }


def write_run_info(out_dir: str | Path, config: Any) -> None:
    """Write ``config.yaml`` (the resolved config) and ``run_info.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    (out_dir / "run_info.json").write_text(json.dumps(run_info(config), indent=2) + "\n")
