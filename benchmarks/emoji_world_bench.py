"""Benchmark of the emoji world (``make bench-world`` runs it after the digits worlds).

What it measures (each section is saved to ``results.json`` as soon as it is done; a rerun skips the
sections already there, so the bench resumes after an interruption):

- ``teacher``: the shipped teacher's top-1 on the PRIVATE test split (Twemoji) and on every PUBLIC
  style's real images (all of them), and which style is nearest the teacher's (the PUBLIC style it
  scores best on: a public signal).
- ``classifiers``: the class judge's and the style classifier's accuracy on the held-out PUBLIC stems.
- ``sets``: unguided class-prompted samples (DDPM, 25 steps, CFG 3) for the style-free prompt
  ("an emoji, mammal") and for each PUBLIC style named ("an emoji, mammal, black line art"): class
  ``adherence`` (judge), Frechet distance in judge features to the real PUBLIC test images of that
  style (the style-free set: of every style) beside the floor of real train against real test,
  ``diversity`` (mean pairwise judge-feature distance per class relative to the real images'), the
  style mix, and the teacher's accuracy on the samples. A grid per style.
- ``kd``: KD of the world's student with the world's recipe on 100 images per class of: the real
  PRIVATE train split (``kd_real``), Gaussian noise (``kd_noise``), each PUBLIC style's real images
  (``kd_public_<style>``), and unguided class-prompted samples style-free
  (``kd_unguided_style_free``) and naming the nearest style (``kd_unguided_<style>``). Each row is a
  full ``diffdfkd run`` and reads the PRIVATE test split once.

Writes ``results.json``, ``results.md`` and ``grid_<set>.png`` to ``benchmarks/results/world-emoji/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from world_bench import frechet_distance, mean_pairwise_distance, sample_many, save_grid  # noqa: E402

from diffdfkd.models.teacher import build_teacher  # noqa: E402
from diffdfkd.worlds import emoji, get_world  # noqa: E402
from diffdfkd.worlds.generator_parts import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_generator  # noqa: E402
from diffdfkd.worlds.judge import judge_outputs, load_judge, look_fractions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "world-emoji"
CONFIG = Path(__file__).resolve().parents[1] / "src" / "diffdfkd" / "configs" / "emoji.yaml"
STYLE_FREE = "style_free"
KD_IMAGES_PER_CLASS = 100
K = len(emoji.CLASS_NAMES)


def class_prompt(label: int, style: str | None = None) -> str:
    """ "an emoji, mammal" or, naming a PUBLIC style, "an emoji, mammal, black line art"."""
    prompt = f"an emoji, {emoji.CLASS_NAMES[label]}"
    return prompt if style is None else f"{prompt}, {emoji.STYLE_PHRASES[style]}"


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    logits = torch.cat([model(images[i : i + 500]) for i in range(0, len(images), 500)])
    return float((logits.argmax(1) == labels).float().mean())


def teacher_section(teacher) -> dict:
    test_x, test_y = emoji.load_private("test")
    per_style = {s: accuracy(teacher, *emoji.load_public(s)) for s in emoji.PUBLIC_STYLES}
    return {
        "private_test": accuracy(teacher, test_x, test_y),
        "private_test_n": len(test_y),
        "public_style": per_style,
        "nearest_style": max(per_style, key=per_style.get),
    }


def classifiers_section(judge, styles_model) -> dict:
    images, labels, styles = emoji.load_public_styled("test")
    adherence = {
        s: accuracy(judge, images[styles == i], labels[styles == i])
        for i, s in enumerate(emoji.PUBLIC_STYLES)
    }
    return {
        "judge_public_test_accuracy": adherence,
        "style_classifier_accuracy": accuracy(styles_model, images, styles),
        "style_classifier_accuracy_per_style": {
            s: accuracy(styles_model, images[styles == i], styles[styles == i])
            for i, s in enumerate(emoji.PUBLIC_STYLES)
        },
        "public_test_n": len(labels),
    }


def diversity(
    feats: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor
) -> float:
    ratios = [
        mean_pairwise_distance(feats[labels == c]) / mean_pairwise_distance(real[real_labels == c])
        for c in range(K)
    ]
    return sum(ratios) / len(ratios)


def measure_set(name: str, images, labels, *, judge, styles_model, teacher) -> dict:
    test, test_y, test_s = emoji.load_public_styled("test")
    train, _, train_s = emoji.load_public_styled("train")
    if name != STYLE_FREE:
        index = emoji.PUBLIC_STYLES.index(name)
        test, test_y, train = test[test_s == index], test_y[test_s == index], train[train_s == index]
    logits, feats = judge_outputs(judge, images)
    _, real_feats = judge_outputs(judge, test)
    _, train_feats = judge_outputs(judge, train)
    correct = logits.argmax(1) == labels
    mix = look_fractions(styles_model, images)
    return {
        "prompt_example": class_prompt(4, None if name == STYLE_FREE else name),
        "n": len(images),
        "adherence": float(correct.float().mean()),
        "adherence_per_class": {
            emoji.CLASS_NAMES[c]: float(correct[labels == c].float().mean()) for c in range(K)
        },
        "frechet_vs_real_public_test": frechet_distance(feats, real_feats),
        "frechet_real_train_vs_test": frechet_distance(train_feats, real_feats),
        "diversity": diversity(feats, labels, real_feats, test_y),
        "style_mix": mix,
        "share_in_named_style": None if name == STYLE_FREE else mix[name],
        "teacher_accuracy": accuracy(teacher, images, labels),
    }


def kd_rows(nearest: str) -> dict[str, list[str]]:
    """Row name -> config overrides (beside the world's config), every row at the same budget."""
    base = ["guidance.mode=none", "guidance.adv_weight=0", "cutmix.enabled=false"]
    rows = {
        "kd_real": [*base, "synth.source=real"],
        "kd_noise": [*base, "synth.source=noise"],
    }
    rows |= {
        f"kd_public_{s}": [*base, "synth.source=real", f"synth.real_split=public:{s}"]
        for s in emoji.PUBLIC_STYLES
    }
    rows["kd_unguided_style_free"] = [*base, "generator.prompt_template=an emoji, {label}"]
    rows[f"kd_unguided_{nearest}"] = [
        *base,
        f"generator.prompt_template=an emoji, {{label}}, {emoji.STYLE_PHRASES[nearest]}",
    ]
    return rows


def run_kd(name: str, overrides: list[str], runs: Path) -> dict:
    from diffdfkd.config import load_config
    from diffdfkd.pipeline import run_experiment

    overrides = [*overrides, f"synth.images_per_class={KD_IMAGES_PER_CLASS}", f"out_dir={runs / name}"]
    config = load_config(CONFIG, overrides)
    summary = run_experiment(config, progress=False)
    return {
        "overrides": overrides,
        "student": summary["student"],
        "student_top1_private_test": summary["student_top1"],
        "teacher_top1_private_test": summary["teacher_top1"],
        "teacher_accuracy_on_synthetic": summary["teacher_accuracy_on_synthetic"],
        "style_mix_of_synthetic": summary["look_mix_of_synthetic"],
        "bn_distance_of_synthetic": summary["bn_distance_of_synthetic"],
        "seconds": summary["seconds"],
    }


def markdown(r: dict) -> str:
    t = r.get("teacher", {})
    lines = ["# The emoji world", "", f"Command: `{r['command']}`; machine: {r['machine']}.", ""]
    if t:
        lines += [
            f"Teacher (wrn_16_2 on PRIVATE Twemoji): **{t['private_test']:.3f}** on the PRIVATE test split "
            f"({t['private_test_n']} images); on each PUBLIC style's real images:",
            "",
            "| style | " + " | ".join(emoji.PUBLIC_STYLES) + " |",
            "|---|" + "---|" * len(emoji.PUBLIC_STYLES),
            "| teacher top-1 | "
            + " | ".join(f"{t['public_style'][s]:.3f}" for s in emoji.PUBLIC_STYLES)
            + " |",
            "",
            f"Nearest style (the teacher's best PUBLIC style): `{t['nearest_style']}`.",
            "",
        ]
    c = r.get("classifiers")
    if c:
        lines += [
            f"Style classifier on held-out PUBLIC stems: **{c['style_classifier_accuracy']:.3f}** "
            f"({c['public_test_n']} images); class judge per style: "
            + ", ".join(f"{s} {v:.3f}" for s, v in c["judge_public_test_accuracy"].items()),
            "",
        ]
    if r.get("sets"):
        lines += [
            "| prompt set | example | adherence (judge) | Frechet vs real PUBLIC test | floor: real train vs test "
            "| diversity | share in named style | teacher acc. on samples |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in r["sets"].items():
            share = "-" if m["share_in_named_style"] is None else f"{m['share_in_named_style']:.2f}"
            lines.append(
                f"| {name} | {m['prompt_example']} | {m['adherence']:.3f} | {m['frechet_vs_real_public_test']:.1f} "
                f"| {m['frechet_real_train_vs_test']:.1f} | {m['diversity']:.2f} | {share} | {m['teacher_accuracy']:.3f} |"
            )
        lines.append("")
    if r.get("kd"):
        lines += [
            "| KD row (100 images per class, same student and recipe) | student top-1 on PRIVATE test | seconds |",
            "|---|---|---|",
        ]
        for name, row in r["kd"].items():
            lines.append(
                f"| {name} | {row['student_top1_private_test']:.3f} | {sum(row['seconds'].values()):.0f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Benchmark the emoji world.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: %(default)s)")
    parser.add_argument(
        "--n-per-class", type=int, default=20, help="samples per class and set (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="sampling steps (default: %(default)s)"
    )
    parser.add_argument(
        "--guidance", type=float, default=DEFAULT_GUIDANCE, help="CFG scale (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument(
        "--only", default="teacher,classifiers,sets,kd", help="sections to run (default: %(default)s)"
    )
    parser.add_argument("--kd-runs", type=Path, default=Path("runs/world_bench/emoji"), help="KD run folders")
    parser.add_argument("--kd-rows", default="", help="comma-separated KD rows to run now (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = get_world("emoji")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results |= {
        "command": " ".join(
            ["python benchmarks/emoji_world_bench.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)",
        "torch_threads": torch.get_num_threads(),
    }
    only = args.only.split(",")

    def save() -> None:
        # merge into what is on disk: two runs of this bench (say its KD rows and its prompt sets) may
        # write the same file, each adding its own sections and rows
        disk = json.loads(path.read_text()) if path.exists() else {}
        for key in ("sets", "kd"):
            results[key] = disk.get(key, {}) | results.get(key, {})
        merged = disk | results
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        tmp.replace(path)
        (args.out / "results.md").write_text(markdown(merged))

    teacher = build_teacher(world.teacher_spec())
    if "teacher" in only and "teacher" not in results:
        results["teacher"] = teacher_section(teacher)
        save()
    judge, styles_model = load_judge("emoji"), load_judge("emoji-styles")
    if "classifiers" in only and "classifiers" not in results:
        results["classifiers"] = classifiers_section(judge, styles_model)
        save()
    if "sets" in only:
        pipe = load_generator(world.generator)
        results.setdefault("sets", {})
        results["sampler"] = {"scheduler": "DDPM", "steps": args.steps, "guidance_scale": args.guidance}
        n = args.n_per_class * K
        labels = torch.arange(n) % K
        for k, name in enumerate([STYLE_FREE, *emoji.PUBLIC_STYLES]):
            if name in results["sets"]:
                continue
            style = None if name == STYLE_FREE else name
            seeds = [10**5 * k + i for i in range(n)]
            images = sample_many(
                pipe, [class_prompt(int(c), style) for c in labels], seeds, args.steps, args.guidance
            )
            results["sets"][name] = measure_set(
                name, images, labels, judge=judge, styles_model=styles_model, teacher=teacher
            )
            save_grid(images[: 3 * K], 3, args.out / f"grid_{name}.png")
            save()
            print(
                name,
                json.dumps({k: v for k, v in results["sets"][name].items() if not isinstance(v, dict)}),
                flush=True,
            )
    if "kd" in only:
        results.setdefault("kd", {})
        nearest = results.get("teacher", {}).get("nearest_style") or teacher_section(teacher)["nearest_style"]
        wanted = args.kd_rows.split(",") if args.kd_rows else None
        for name, overrides in kd_rows(nearest).items():
            if name not in results["kd"] and (wanted is None or name in wanted):
                results["kd"][name] = run_kd(name, overrides, args.kd_runs)
                save()
                print(name, results["kd"][name]["student_top1_private_test"], flush=True)
    save()
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
