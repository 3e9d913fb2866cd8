"""The emoji world's sampler (CFG scale and DDPM steps) chosen on PUBLIC and synthetic signals only.

Every candidate samples ``--per-class`` unguided images per class with the world's class prompts
("an emoji, mammal"), the same seeds for every candidate, and is scored by the class judge's accuracy
on them (``adherence``: a PUBLIC-data classifier), the shipped teacher's accuracy and target-class
probability on them (the teacher is given; the images are synthetic), the style mix (the style
classifier) and the seconds per image. No PRIVATE image is read.

Usage: python benchmarks/tune_emoji_sampler.py [--per-class 10] [--out benchmarks/results/tuning]
Writes ``<out>/emoji-sampler.json`` and ``.md`` after each candidate; a rerun skips those done.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from world_bench import sample_many  # noqa: E402

from diffdfkd.models.teacher import build_teacher  # noqa: E402
from diffdfkd.worlds import emoji, get_world  # noqa: E402
from diffdfkd.worlds.generator_parts import load_generator  # noqa: E402
from diffdfkd.worlds.judge import judge_outputs, load_judge, look_fractions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tuning"
# (CFG scale, DDPM steps): the shipped 3 and 20, the paper's DomainNet 7, and more steps at each
CANDIDATES = [(3.0, 20), (2.0, 20), (5.0, 20), (7.0, 20), (3.0, 50), (7.0, 50)]


@torch.no_grad()
def score(images: torch.Tensor, labels: torch.Tensor, judge, styles_model, teacher) -> dict:
    logits, _ = judge_outputs(judge, images)
    probs = teacher(images).softmax(1)
    return {
        "adherence": float((logits.argmax(1) == labels).float().mean()),
        "teacher_accuracy": float((probs.argmax(1) == labels).float().mean()),
        "teacher_p_target": float(probs.gather(1, labels[:, None]).mean()),
        "style_mix": look_fractions(styles_model, images),
    }


def markdown(records: dict, per_class: int) -> str:
    lines = [
        "# The emoji world's sampler: CFG scale and DDPM steps on PUBLIC signals",
        "",
        f"`python benchmarks/tune_emoji_sampler.py --per-class {per_class}`: {per_class * len(emoji.CLASS_NAMES)}"
        " unguided images per candidate (style-free class prompts, the same seeds), one torch thread on the"
        " shared 2-core CPU. `adherence`: the PUBLIC class judge's accuracy; `teacher acc` / `p(target)`:"
        " the shipped teacher on the samples; `top style`: the style classifier's commonest style. No"
        " PRIVATE image is read.",
        "",
        "| CFG | steps | adherence | teacher acc | p(target) | top style | s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records.values():
        top = max(r["style_mix"], key=r["style_mix"].get)
        lines.append(
            f"| {r['cfg_scale']:g} | {r['steps']} | {r['adherence']:.3f} | {r['teacher_accuracy']:.3f} | "
            f"{r['teacher_p_target']:.3f} | {top} {r['style_mix'][top]:.2f} | {r['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=10, help="images per class and candidate")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = get_world("emoji")
    pipe = load_generator(world.generator)
    judge, styles_model = load_judge("emoji"), load_judge("emoji-styles")
    teacher = build_teacher(world.teacher_spec())
    n = args.per_class * len(emoji.CLASS_NAMES)
    labels = torch.arange(n) % len(emoji.CLASS_NAMES)
    prompts = [f"an emoji, {emoji.CLASS_NAMES[int(c)]}" for c in labels]
    path = args.out / "emoji-sampler.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    for cfg_scale, steps in CANDIDATES:
        key = f"cfg{cfg_scale:g}_steps{steps}"
        if key in records:
            continue
        start = time.perf_counter()
        images = sample_many(pipe, prompts, list(range(n)), steps, cfg_scale)
        seconds = time.perf_counter() - start
        records[key] = {
            "cfg_scale": cfg_scale,
            "steps": steps,
            "n": n,
            **score(images, labels, judge, styles_model, teacher),
            "seconds_per_image": seconds / n,
        }
        path.write_text(json.dumps(records, indent=2) + "\n")
        (args.out / "emoji-sampler.md").write_text(markdown(records, args.per_class))
        print(key, json.dumps({k: v for k, v in records[key].items() if k != "style_mix"}), flush=True)


if __name__ == "__main__":
    main()
