"""How the digits defaults were chosen: a sweep scored on SYNTHETIC-data signals only.

Never reads the PRIVATE data. For each candidate setting it synthesises a small balanced set with the
shipped generator and teacher and reports:

- ``teacher_acc`` / ``p_target``: does the guidance hit its target classes (on the images as saved);
- ``bn_distance``: DeepInversion's BatchNorm-statistics distance of the WHOLE synthetic set to the
  teacher's running statistics (its training data's feature statistics): lower means the synthetic set
  looks more like the data the teacher was trained on, which is what the student needs;
- ``judge_acc``: accuracy of the world's PUBLIC judge (does it still look like the intended digit);
- ``scan_share`` (worlds whose generator holds several looks): the share of images the PUBLIC look
  classifier puts in the teacher's look (``scan``, the private data's low-resolution rendering);
- images through ``synthesize`` (the library's own path, the online student included), as saved;
- with ``--kd``: a student (the config's KD recipe) distilled on the candidate's images, then its
  agreement with the teacher on PUBLIC MNIST test images rendered in the teacher's look
  (``agree_scan``) and in every look (``agree_all``): what KD is for, measured on public data only.

Usage: python benchmarks/tune_digits.py [--world digits] [--per-class 4] [--candidate "k=v k=v" ...]
[key.sub=value ...]  (candidates: SWEEP, or the ``--candidate`` lists; the trailing overrides apply to all)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from diffdfkd.bench import WORLD_CONFIGS  # noqa: E402
from diffdfkd.config import load_config  # noqa: E402
from diffdfkd.distill.trainer import TensorData, fit  # noqa: E402
from diffdfkd.evaluate import bn_statistics_distance  # noqa: E402
from diffdfkd.models import create_model  # noqa: E402
from diffdfkd.models.teacher import build_teacher  # noqa: E402
from diffdfkd.synth.dataset import load_synthetic  # noqa: E402
from diffdfkd.synth.run import synthesize  # noqa: E402
from diffdfkd.worlds import get_world, teacher_spec  # noqa: E402
from diffdfkd.worlds.digits import load_public  # noqa: E402
from diffdfkd.worlds.judge import load_judge, load_look_classifier, look_fractions  # noqa: E402
from diffdfkd.worlds.looks import LOOKS, render_look  # noqa: E402

TEMPLATE = "generator.prompt_template=a handwritten digit {label}"
UNGUIDED = ["guidance.mode=none", "guidance.adv_weight=0"]  # no teacher guidance: no adversarial term either
SWEEP: list[list[str]] = [
    UNGUIDED,
    [],
    ["guidance.step_size=0.5"],
    ["guidance.step_size=2"],
    ["guidance.bn_weight=0.3"],
    ["guidance.bn_weight=0"],
    ["generator.cfg_scale=1.5"],
    [TEMPLATE, *UNGUIDED],
    [TEMPLATE],
    [TEMPLATE, "guidance.bn_weight=1"],
    [TEMPLATE, "guidance.bn_weight=1", "guidance.step_size=2"],
    ["guidance.bn_weight=1"],
    ["guidance.bn_weight=1", "guidance.step_size=2"],
]


TEACHER_LOOK = "scan"


def public_agreement(config, teacher, images: torch.Tensor, labels: torch.Tensor, folder: str) -> dict:
    """Distil the config's student on ``images`` and measure its agreement with the teacher on PUBLIC
    MNIST test images rendered in the teacher's look and in every look."""
    torch.manual_seed(config.seed)
    student = create_model(config.distill.student, num_classes=teacher.num_classes, in_channels=3)
    fit(student, TensorData(images, labels), recipe=config.distill, out_dir=folder, teacher=teacher,
        seed=config.seed, progress=False)  # fmt: skip
    public, _ = load_public("test")
    student.eval()
    result = {}
    for name, looks in (("agree_scan", [TEACHER_LOOK]), ("agree_all", list(LOOKS))):
        rendered = torch.cat([render_look(public, look) for look in looks])
        with torch.no_grad():
            same = student(rendered).argmax(1) == teacher(rendered).argmax(1)
        result[name] = float(same.float().mean())
    return result


def score(
    world: str, base: list[str], overrides: list[str], per_class: int, judge, looks, kd: bool = False
) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            WORLD_CONFIGS[world],
            [*base, *overrides, f"synth.images_per_class={per_class}", f"synth.out_dir={folder}"],
        )
        teacher = build_teacher(teacher_spec(config))
        start = time.perf_counter()
        data = load_synthetic(synthesize(config, progress=False), kinds=("final",))  # the library's path
        seconds = time.perf_counter() - start
    images, labels = data.images, data.labels
    with torch.no_grad():
        probs = teacher(images).softmax(dim=1)
    result = {
        "overrides": overrides,
        "teacher_acc": float((probs.argmax(1) == labels).float().mean()),
        "p_target": float(probs.gather(1, labels[:, None]).mean()),
        "bn_distance": bn_statistics_distance(teacher, images),
        "images_per_s": len(images) / seconds,
    }
    if judge is not None:
        with torch.no_grad():
            result["judge_acc"] = float((judge(images).argmax(1) == labels).float().mean())
    if looks is not None:
        result["scan_share"] = look_fractions(looks, images)[TEACHER_LOOK]
    if kd:
        with tempfile.TemporaryDirectory() as folder:
            result |= public_agreement(config, teacher, images, labels, folder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default="digits-mnist", choices=sorted(WORLD_CONFIGS), help="world")
    parser.add_argument("--per-class", type=int, default=4, help="images per class per candidate")
    parser.add_argument("--kd", action="store_true", help="also distil a student: public agreement")
    parser.add_argument(
        "--candidate", action="append", default=[], help="a space-separated override list (repeatable)"
    )
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--only", default="", help="comma-separated SWEEP positions to run (default: all)")
    parser.add_argument("overrides", nargs="*", help="applied to every candidate")
    args = parser.parse_args()
    judge = load_judge(args.world)
    looks = load_look_classifier() if len(get_world(args.world).looks) > 1 else None
    rows = []
    chosen = [int(i) for i in args.only.split(",")] if args.only else range(len(SWEEP))
    candidates = [c.split() for c in args.candidate] or [SWEEP[i] for i in chosen]
    for candidate in candidates:
        row = score(args.world, args.overrides, candidate, args.per_class, judge, looks, args.kd)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
