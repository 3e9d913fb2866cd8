"""The demo's figure: ``diffdfkd demo`` from scratch, timed, its student's private-test top-1 recorded.

Runs the CLI's ``demo`` as a child process into a fresh folder (``--out``, deleted first), with torch's
default threads, and writes ``results/demo/results.json``: wall seconds, student and teacher top-1 (the
demo's one read of the PRIVATE test split), the machine and the load average. Issue 14's goal: student
>= 0.95 in at most 15 minutes on 2 cores (``benchmarks/goals.py``).

Usage: python benchmarks/demo_bench.py [--out runs/demo-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo-bench", help="the demo's run folder (deleted first)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "diffdfkd.cli", "demo", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    summary = json.loads((out / "results.json").read_text())
    record = {
        "command": "python benchmarks/demo_bench.py " + " ".join(sys.argv[1:]),
        "wall_seconds": wall,
        "student_top1": summary["student_top1"],
        "teacher_top1": summary["teacher_top1"],
        "test_data": summary["test_data"],
        "synthetic_images": summary["synthetic_images"],
        "seconds": summary["seconds"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average_after": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
