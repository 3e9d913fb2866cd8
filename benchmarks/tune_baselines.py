"""How the baselines' settings were chosen: sweeps scored on SYNTHETIC-data signals only.

Never reads the PRIVATE data. Each candidate synthesises a small balanced set in the digits world
through the source interface (``tune_digits.score``) and is scored by the teacher's accuracy and
target-class probability on it, the BatchNorm-statistics distance of the whole set to the teacher's
running statistics, the PUBLIC-MNIST judge's accuracy and the synthesis speed (one torch thread);
with ``--kd`` (the default for ``cmi``) also the agreement with the teacher on PUBLIC MNIST of a
student distilled on the candidate's images (``tune_digits.public_agreement``).

Usage: python benchmarks/tune_baselines.py {deepinversion,fast,cmi} [--per-class 4] [--kd] [--out DIR]
Writes ``<out>/<method>.json`` and ``<out>/<method>.md`` after each candidate; a rerun skips the
candidates already in the json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tune_digits import score  # noqa: E402

from diffdfkd.worlds.judge import load_judge  # noqa: E402

DI = "synth.source=deepinversion"
FAST = "synth.source=fast"
CMI = "synth.source=cmi"
# Applied to every candidate of a method (not part of its record's overrides): DeepInversion and Fast
# were swept before the adversarial term was the digits default, so their records are without it.
BASE: dict[str, list[str]] = {
    "deepinversion": ["guidance.adv_weight=0"],
    "fast": ["guidance.adv_weight=0"],
    "cmi": [],
}
SWEEPS: dict[str, list[list[str]]] = {
    "deepinversion": [
        # the balance: BN per sample (each image's own statistics) at three weights, against BN per
        # mixing group of 20 (each image charged its group's distance), with and without the first-BN x10
        [DI, "deepinversion.bn_per=sample", "deepinversion.bn_weight=0.3"],
        [DI, "deepinversion.bn_per=sample", "deepinversion.bn_weight=1"],
        [DI, "deepinversion.bn_per=sample", "deepinversion.bn_weight=3"],
        [DI, "deepinversion.bn_per=group", "deepinversion.bn_weight=1"],
        [DI, "deepinversion.bn_per=group", "deepinversion.bn_weight=1", "deepinversion.first_bn_weight=1"],
        # the iteration curve at the chosen balance (bn_per=group, bn_weight=1: the defaults)
        [DI, "deepinversion.iterations=50"],
        [DI, "deepinversion.iterations=100"],
        [DI, "deepinversion.iterations=400"],
        [DI, "deepinversion.iterations=800"],
    ],
    "fast": [
        # the published settings (Fast-10: 10 inner steps, lr 2e-3, CE 0.5, BN 10 per batch)
        [FAST],
        [FAST, "fast.warmup_rounds=20"],
        [FAST, "fast.warmup_rounds=50"],
        [FAST, "fast.lr_generator=0.01"],
        [FAST, "fast.bn_weight=1"],
        [FAST, "fast.steps=5"],
        # the CE-BN balance decides: BN 10 per batch of 20 drowns CE (teacher accuracy ~0.2)
        [FAST, "fast.bn_weight=3"],
        [FAST, "fast.bn_weight=1", "fast.warmup_rounds=20"],
    ],
    "cmi": [
        # the published weights (CE 0.5, BN 1, contrastive 0.8 at T 0.1, adversarial 0.5) at a CPU
        # budget of iterations, then the contrastive and adversarial terms each off, and more steps
        [CMI, "cmi.iterations=50", "guidance.adv_weight=0.5"],
        [CMI, "cmi.iterations=50", "guidance.adv_weight=0.5", "cmi.contrastive_weight=0"],
        [CMI, "cmi.iterations=50", "guidance.adv_weight=0"],
        [CMI, "cmi.iterations=100", "guidance.adv_weight=0.5"],
        [CMI, "cmi.iterations=50", "guidance.adv_weight=0.5", "cmi.lr=0.01"],
    ],
}


CHOICES = {
    "deepinversion": """\
Chosen (the defaults of `DeepInversionConfig`): BN statistics per mixing group of 20 with each image
charged its group's distance (`bn_per=group`, `bn_weight=1`), first BN layer x10, 200 iterations.
Per group the synthetic set's BN distance is 0.79 against 1.97-2.09 per sample, at a higher teacher
confidence (0.99 against 0.37-0.90); the first-BN multiplier lowers it further (0.99 -> 0.79). The
iteration curve at that balance: 50 / 100 / 200 / 400 iterations give BN distance 2.39 / 1.20 / 0.79 /
0.58 at 0.31 / 0.45 / 1.32 / 2.77 s per image (speeds under varying contention): 200 is the knee, and
400 would double the cost of the 3-seed measurement, which the shared CPU could not fit. The rows with
`bn_per=group` were measured as `bn_weight=20` per group of 20 before the per-image charging
(`per_sample_weight`) existed: the same loss, relabelled. The 800-iteration point was not measured
(stopped to free the CPU for the measurement).""",
    "fast": """\
Overrides are relative to the published settings (`bn_weight=10`, `warmup_rounds=0`), the defaults when
these rows were measured; s/image includes the warm-up rounds. Chosen (now the defaults of `FastConfig`): `bn_weight=1`, `warmup_rounds=20`, the rest as published
(10 inner steps, generator lr 2e-3, latent lr 0.01, CE 0.5). The published BN weight 10 (for batches of
256) drowns CE in our rounds of 20: the teacher recognises its target in only 0.15-0.20 of the images,
whatever the warm-up, steps or learning rate; BN weight 1 brings that to 0.83-0.89. Among those, 20
warm-up rounds lower the BN distance (2.41 -> 2.02) at a slightly lower teacher accuracy (0.885 -> 0.83);
the warm-up costs 20 extra rounds (about +40 % at 1,000 images, 50 rounds). 200 images per candidate
(10 rounds) is few for a method that learns across rounds: the choice is between clear differences only.""",
    "cmi": """\
Overrides are relative to the `CMIConfig` defaults, which keep the published weights (CE 0.5, BN 1,
contrastive 0.8 at temperature 0.1, generator / latent / head lr 1e-3) with a 256-dim latent and the
Fast generator; `guidance.adv_weight=0.5` is the published adversarial weight against the online
student (the digits defaults `online.*`: on from round 5 of these 10). `agree_scan` / `agree_all`:
agreement with the teacher, on PUBLIC MNIST in the teacher's look / in every look, of a student
distilled on the candidate's 200 images (one seed: differences of a few points are within noise).
Every candidate hits its targets (teacher accuracy 0.93-0.995) and teaches. Chosen: the published
settings at 50 iterations (200 in the published scripts), for cost: best `agree_scan` (0.443) at
2.6 s/image. The signals disagree on the rest: without the contrastive term `agree_scan` falls to
0.336 but `agree_all` rises (0.349 -> 0.397); without the adversarial term 0.390 / 0.373; 100
iterations lower the BN distance (2.45 -> 1.82) at 0.424 / 0.403 for 1.7x the cost; lr 0.01 gives
0.388 / 0.414. None wins on both signals by more than the noise, so the published weights stay; 100
iterations is the first thing to try where synthesis time is cheap (a GPU).""",
}


def markdown(method: str, rows: list[dict], per_class: int) -> str:
    lines = [
        f"# Tuning the {method} baseline on synthetic-data signals (digits world)",
        "",
        f"`python benchmarks/tune_baselines.py {method} --per-class {per_class}`: {per_class * 10} images per "
        "candidate, one torch thread, on the project's shared 2-core CPU (speeds are upper bounds on cost). "
        "No PRIVATE image is read. `bn_distance`: BN-statistics distance of the whole set to the teacher's "
        "running statistics (real PRIVATE train images: 2.36, by `diffdfkd.evaluate.bn_statistics_distance`); `judge`: PUBLIC-MNIST judge "
        "accuracy.",
        "",
        "| overrides | teacher acc | p(target) | bn_distance | judge | agree_scan | agree_all | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in rows:
        overrides = " ".join(o for o in r["overrides"] if not o.startswith("synth.source")) or "(published)"
        lines.append(
            f"| `{overrides}` | {r['teacher_acc']:.3f} | {r['p_target']:.3f} | {r['bn_distance']:.2f} "
            f"| {r.get('judge_acc', nan):.3f} | {r.get('agree_scan', nan):.3f} | {r.get('agree_all', nan):.3f} "
            f"| {1 / r['images_per_s']:.2f} |"
        )
    return "\n".join([*lines, "", CHOICES[method]]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("method", choices=sorted(SWEEPS), help="which baseline's sweep to run")
    parser.add_argument("--per-class", type=int, default=4, help="images per class per candidate")
    parser.add_argument("--out", default="benchmarks/results/tuning", help="where the record goes")
    parser.add_argument("--kd", action="store_true", help="also distil a student: public agreement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / f"{args.method}.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    done = [r["overrides"] for r in rows]
    judge = load_judge()
    kd = args.kd or args.method == "cmi"
    for candidate in SWEEPS[args.method]:
        if candidate in done:
            continue
        rows.append(score("digits", BASE[args.method], candidate, args.per_class, judge, None, kd))
        print(json.dumps(rows[-1]), flush=True)
        record.write_text(json.dumps(rows, indent=1) + "\n")
        (out / f"{args.method}.md").write_text(markdown(args.method, rows, args.per_class))


if __name__ == "__main__":
    main()
