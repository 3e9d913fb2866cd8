"""Benchmark of teacher-guided synthesis in the digits world (``make bench-synth``).

For each guidance mode (none = plain CFG, full, detach_unet, one_pass) at the digits defaults
(``configs/digits.yaml``: DDPM, CFG 3, CE 1 / BN 0.1, step size 1, Latent CutMix on), on the same seeds:

- speed: images/s of ``source.generate`` (model loading excluded) and peak resident memory of a fresh
  process per mode (CPU; peak allocated GPU memory on CUDA);
- effect: the teacher's accuracy and mean probability of the target class on the images as saved
  (uint8), and, when the world's judge is shipped, the judge's accuracy (an independent classifier
  trained on the generator's PUBLIC data: it tells real class evidence from teacher-specific noise).

Writes ``results.json`` and ``results.md`` to ``benchmarks/results/synth/``. Needs the shipped digits
teacher and generator. ``python benchmarks/synth_bench.py --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "synth"
MODES = ("none", "full", "detach_unet", "one_pass")


def measure(config_path: str, mode: str, overrides: list[str]) -> dict:
    """Synthesize the configured number of images with guidance ``mode`` in this process; measure it."""
    from diffdfkd.config import load_config
    from diffdfkd.experiment import resolve_config
    from diffdfkd.models.teacher import build_teacher
    from diffdfkd.synth.run import SynthPlan
    from diffdfkd.synth.sources import SOURCES
    from diffdfkd.worlds import teacher_spec

    start = time.perf_counter()
    config = load_config(config_path, [*overrides, f"guidance.mode={mode}"])
    teacher = build_teacher(teacher_spec(config))
    config = resolve_config(config)
    source = SOURCES.create(config.synth.source, config=config, teacher=teacher)
    plan = SynthPlan.from_config(config, len(teacher.class_names))
    setup_s = time.perf_counter() - start
    device = source.components.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images, targets, logs = [], [], []
    start = time.perf_counter()
    for b in range(plan.num_batches):
        indices = plan.indices(b)
        batch = source.generate(indices, plan.targets(indices))
        images.append(batch.images)
        targets.append(batch.targets)
        logs += batch.logs
    seconds = time.perf_counter() - start
    images = torch.cat(images).clamp(0, 1).mul(255).round().div(255)  # as saved
    labels = torch.cat(targets).argmax(dim=1)
    with torch.no_grad():
        probs = teacher(images.to(device)).float().softmax(dim=1).cpu()
    result = {
        "mode": mode,
        "images": len(images),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(images) / seconds, 3),
        "setup_s": round(setup_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "teacher_accuracy": round(float((probs.argmax(dim=1) == labels).float().mean()), 4),
        "teacher_prob_target": round(float(probs.gather(1, labels[:, None]).mean()), 4),
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if logs:
        last = [log for log in logs if log["step"] == max(x["step"] for x in logs)]
        for key in ("ce", "bn"):
            result[f"last_step_{key}_per_batch"] = round(sum(x[key] for x in last) / len(last), 3)
    judge_accuracy = _judge_accuracy(config.world, images, labels)
    if judge_accuracy is not None:
        result["judge_accuracy"] = round(judge_accuracy, 4)
    return result


def _judge_accuracy(world: str, images: torch.Tensor, labels: torch.Tensor) -> float | None:
    if world != "digits":
        return None
    from diffdfkd.worlds.judge import SHIPPED_JUDGE, judge_accuracy, load_judge

    if not SHIPPED_JUDGE.is_file():
        return None
    return float(judge_accuracy(load_judge(), images, labels))


def _markdown(results: dict) -> str:
    lines = [
        "# Teacher-guided synthesis in the digits world",
        "",
        f"Config: `{results['config']}` with overrides `{' '.join(results['overrides']) or '-'}`; "
        f"{results['runs'][0]['images']} images per mode, same seeds. Machine: {results['machine']}, "
        f"torch threads {results['torch_threads']}.",
        f"Command: `{results['command']}`",
        "",
        "| mode | images/s | s/image | peak RSS MB | teacher acc | teacher p(target) | judge acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        judge = f"{r['judge_accuracy']:.3f}" if "judge_accuracy" in r else "-"
        lines.append(
            f"| {r['mode']} | {r['images_per_s']:.3f} | {1 / r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['teacher_accuracy']:.3f} | {r['teacher_prob_target']:.3f} | {judge} |"
        )
    lines += [
        "",
        "none = plain classifier-free guidance (the unguided baseline); full = gradient through UNet, VAE "
        "decoder and teacher (the paper's intent); detach_unet = gradient through decoder and teacher only; "
        "one_pass = classifier-guidance correction of eps, no second UNet pass. Teacher accuracy is measured "
        "by the guiding teacher itself; the judge is an independent MNIST classifier.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"), help="experiment config")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="guidance modes to run"
    )
    parser.add_argument("--images-per-class", type=int, default=4, help="images per class and mode")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for results.json and results.md")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # worker: one mode in this process
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [f"synth.images_per_class={args.images_per_class}", *args.overrides]
    if args.one:
        Path(args.json).write_text(json.dumps(measure(args.config, args.one, overrides)))
        return

    from diffdfkd.config import load_config
    from diffdfkd.experiment import resolve_config
    from diffdfkd.models.teacher import build_teacher
    from diffdfkd.worlds import teacher_spec

    config = load_config(args.config, overrides)
    build_teacher(
        teacher_spec(config)
    )  # fail early, with the loader's message, if the teacher is not shipped yet
    resolve_config(config)  # likewise for the generator
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:  # a fresh process per mode, so that peak memory is that mode's own
            out = Path(tmp) / f"{mode}.json"
            command = [sys.executable, __file__, "--config", args.config, "--one", mode, "--json", str(out)]
            command += ["--threads", str(args.threads), "--images-per-class", str(args.images_per_class)]
            subprocess.run([*command, *args.overrides], check=True)
            runs.append(json.loads(out.read_text()))
            print(json.dumps(runs[-1]), flush=True)
    results = {
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": args.threads,
        "command": "python benchmarks/synth_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": runs,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
