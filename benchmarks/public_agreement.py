"""A PUBLIC signal for every bench row: how often each run's student agrees with the teacher on the
real PUBLIC images of the emoji world (every style's held-out stems), beside its PRIVATE top-1.

The efficacy issue asks whether the public signal used to choose settings ranks methods as the PRIVATE
test split does. This reads each finished run folder of a bench (``<bench>/runs/<row>/seed<k>``), loads
its ``student/student.safetensors`` and measures agreement with the shipped teacher (argmax of both) on
``emoji.load_public_styled("test")``, overall and per style. No PRIVATE image is read here (the PRIVATE
top-1 comes from the run's own ``results.json``).

Usage: python benchmarks/public_agreement.py [--bench benchmarks/results/emoji]
Writes ``<bench>/public_agreement.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from diffdfkd.bench.run import finished_runs, run_student
from diffdfkd.config import load_config
from diffdfkd.evaluate import predict_logits
from diffdfkd.models.teacher import build_teacher
from diffdfkd.worlds import emoji, get_world


def agreement(student_preds: torch.Tensor, teacher_preds: torch.Tensor, styles: torch.Tensor) -> dict:
    same = (student_preds == teacher_preds).float()
    return {
        "all": float(same.mean()),
        **{s: float(same[styles == i].mean()) for i, s in enumerate(emoji.PUBLIC_STYLES)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("benchmarks/results/emoji"), help="bench folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, _, styles = emoji.load_public_styled("test")
    teacher = build_teacher(get_world("emoji").teacher_spec())
    teacher_preds = predict_logits(teacher, images).argmax(1)
    rows: dict[str, list[dict]] = {}
    for run in finished_runs(args.bench):
        config = load_config(run / "config.yaml")
        student = run_student(run, num_classes=len(emoji.CLASS_NAMES))
        summary = json.loads((run / "results.json").read_text())
        rows.setdefault(run.parent.name, []).append(
            {
                "seed": config.seed,
                "student_top1_private_test": summary["student_top1"],
                "synthesis_s_per_image": summary["seconds"]["synthesis"] / summary["synthetic_images"],
                "public_agreement": agreement(
                    predict_logits(student, images).argmax(1), teacher_preds, styles
                ),
            }
        )
    (args.bench / "public_agreement.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Student-teacher agreement on real PUBLIC emoji (held-out stems) beside PRIVATE top-1",
        "",
        f"`python benchmarks/public_agreement.py --bench {args.bench}`; means over the seeds run (seeds 0..n-1;"
        " std over seeds). Synthesis s/image: one torch thread on the shared 2-core CPU, two runs at a time.",
        "",
        "| row | seeds | PRIVATE top-1 % (mean +- std) | synthesis s/image | PUBLIC agreement, all styles | "
        + " | ".join(emoji.PUBLIC_STYLES)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(emoji.PUBLIC_STYLES),
    ]
    order = sorted(rows, key=lambda r: -statistics.mean(x["student_top1_private_test"] for x in rows[r]))
    for name in order:
        runs = rows[name]
        mean = {
            k: statistics.mean(x["public_agreement"][k] for x in runs) for k in runs[0]["public_agreement"]
        }
        top1 = [100 * x["student_top1_private_test"] for x in runs]
        spread = f" +- {statistics.stdev(top1):.1f}" if len(top1) > 1 else ""
        cost = statistics.mean(x["synthesis_s_per_image"] for x in runs)
        styles_cells = " | ".join(f"{mean[s]:.3f}" for s in emoji.PUBLIC_STYLES)
        lines.append(
            f"| `{name}` | {len(runs)} | {statistics.mean(top1):.1f}{spread} | {cost:.2f} | {mean['all']:.3f} | "
            f"{styles_cells} |"
        )
    (args.bench / "public_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
