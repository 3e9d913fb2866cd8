"""Beyond the paper (issue 14): adapt the generator to the teacher without data, then score it.

Runs the library's adaptation (``diffdfkd adapt-generator``, ``diffdfkd.synth.adapt``: the UNet of the
world's shipped generator fine-tuned for ``--steps`` steps on the guidance's own CE + BN loss of its
one-step predictions, with an anchor that keeps it a denoiser), then scores the adapted generator with
``tune_digits.py``'s signals (PUBLIC and synthetic only; no private image is read), with the world's
shipped guidance and unguided. ``--save DIR`` keeps the adapted pipeline (``baselines_digits.py``'s
``diffdfkd_adapted`` row reads it from ``<its out folder>/adapted_generator``); a rerun resumes it.

Usage: python benchmarks/adapt_generator.py --world digits [--steps 150] [--lr 1e-4] [--anchor 1]
[--lora-rank 0] [--per-class 30] [--json F] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tune_digits import UNGUIDED, score  # noqa: E402

from diffdfkd.bench import WORLD_CONFIGS  # noqa: E402
from diffdfkd.config import load_config  # noqa: E402
from diffdfkd.synth.adapt import AdaptSettings, adapt_generator  # noqa: E402
from diffdfkd.worlds import get_world  # noqa: E402
from diffdfkd.worlds.judge import load_judge, load_look_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default="digits", choices=sorted(WORLD_CONFIGS), help="world")
    parser.add_argument("--steps", type=int, default=150, help="adaptation steps (one mixing group each)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the UNet")
    parser.add_argument("--anchor", type=float, default=1.0, help="weight of the denoiser anchor")
    parser.add_argument(
        "--lora-rank", type=int, default=0, help="0: the whole UNet; R: a LoRA adapter of rank R"
    )
    parser.add_argument("--per-class", type=int, default=30, help="images per class per scored candidate")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--save", default="", help="keep the adapted pipeline in this folder (resumable)")
    args = parser.parse_args()
    config = load_config(WORLD_CONFIGS[args.world], [])
    settings = AdaptSettings(steps=args.steps, lr=args.lr, anchor=args.anchor, lora_rank=args.lora_rank)
    judge = load_judge(args.world)
    looks = load_look_classifier() if len(get_world(args.world).looks) > 1 else None
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.save or Path(folder) / "generator")
        info = adapt_generator(config, path, settings, progress=False)
        adapt = {"steps": args.steps, "lr": args.lr, "anchor": args.anchor, "lora_rank": args.lora_rank,
                 "trainable_params": info["trainable_params"], "seconds": info["seconds"],
                 "s_per_step": info["s_per_step"], "last": info["last"]}  # fmt: skip
        for guided in ([], UNGUIDED):
            row = score(args.world, [f"generator.path={path}"], guided, args.per_class, judge, looks, kd=True)
            rows.append({"world": args.world, "adapt": adapt, **row})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
