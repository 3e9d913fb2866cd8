"""Benchmark of a digits world's generator (``make bench-world`` runs it for both worlds).

At the default sampler settings (DDPM, 25 steps, classifier-free guidance 3), for each prompt set (the
look-free class prompts "a handwritten digit <name>" and, in a world whose generator knows several
looks, the class prompts naming each look):

- class adherence: the world's digit judge's accuracy on the class-prompted samples;
- fidelity/diversity: Frechet distance, in the judge's penultimate features, to real PUBLIC MNIST "test"
  rendered in that look (the look-free set: in a seeded uniform mix of the world's looks), beside the
  floor of real PUBLIC "train" against the same; per class the mean pairwise feature distance of the
  samples relative to that of the real images (1.0 = as diverse as the real data);
- the look classifier's mix of looks (for a look-naming set: the share in the named look);
- the domain gap: the world's TEACHER's accuracy on the unguided samples, beside its accuracy on real
  PUBLIC test images rendered in the same look;
- in a world with several looks, the look-free prior again at each of ``--prior-scales`` (CFG 1: the
  generator's own conditional distribution; 2): the look-free and low-resolution prompts with the same
  seeds, their look mix and the teacher's accuracy; the world's prior goals are judged at every scale.

With ``--kd`` (the broad world), two reported rows of the method's pipeline: KD of the default student on
1,000 unguided samples of the look-naming low-resolution prompt (the ceiling guidance should approach)
and on 1,000 look-free unguided samples (its floor); each reads the PRIVATE test split once for the
student's top-1 (and the teacher's, as every run does).

Writes ``results.json``, ``results.md`` and ``grid.png`` (a row of classes 0..9 at two seeds per prompt
set) to ``benchmarks/results/world-<world>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from diffdfkd.models.teacher import build_teacher  # noqa: E402
from diffdfkd.worlds import get_world  # noqa: E402
from diffdfkd.worlds.digits import CLASS_NAMES, load_public  # noqa: E402
from diffdfkd.worlds.generator_parts import (  # noqa: E402
    BUILD_INFO,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    load_generator,
    sample_images,
)
from diffdfkd.worlds.judge import (  # noqa: E402
    judge_accuracy,
    judge_outputs,
    load_judge,
    load_look_classifier,
    look_fractions,
    render_random_looks,
)
from diffdfkd.worlds.looks import LOOKS, look_prompt, render_looks  # noqa: E402

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
BATCH = 50
LOOK_FREE = "look-free"
KD_LOOK = "scan"
KD_IMAGES_PER_CLASS = 100
# Classifier-free guidance scales at which the look-free prior is measured besides the sampler's own
# (broad world): at scale 1 the samples come from the generator's own conditional distribution, the
# prior itself; larger scales sharpen each prompt towards its most typical images.
PRIOR_SCALES = (1.0, 2.0)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to features ``a`` ``[N, D]`` and ``b`` ``[M, D]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (the FID formula).
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance over all distinct pairs of rows of ``features`` ``[N, D]``."""
    d = torch.cdist(features.double(), features.double())
    n = features.shape[0]
    return float(d.sum() / (n * (n - 1)))


def diversity_ratio(
    fake: torch.Tensor, fake_labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor
) -> tuple[float, list[float]]:
    """Per class: mean pairwise feature distance of samples / that of real images; (mean, per class)."""
    ratios = []
    for c in range(len(CLASS_NAMES)):
        ratios.append(
            mean_pairwise_distance(fake[fake_labels == c]) / mean_pairwise_distance(real[real_labels == c])
        )
    return sum(ratios) / len(ratios), ratios


def sample_many(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> torch.Tensor:
    """Sample ``[N, 3, 32, 32]`` images in batches of ``BATCH``."""
    out = []
    for i in range(0, len(prompts), BATCH):
        out.append(
            sample_images(
                pipe, prompts[i : i + BATCH], seeds[i : i + BATCH], steps=steps, guidance_scale=guidance
            )
        )
    return torch.cat(out)


def sampling_speed(pipe, steps: int, guidance: float, repeats: int = 3) -> float:
    """Images per second at batch ``BATCH`` (after one warm-up batch), best of ``repeats``."""
    prompts = [look_prompt(i % 10) for i in range(BATCH)]
    sample_images(pipe, prompts[:4], list(range(4)), steps=2, guidance_scale=guidance)  # warm-up
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        sample_images(
            pipe, prompts, list(range(r * BATCH, (r + 1) * BATCH)), steps=steps, guidance_scale=guidance
        )
        best = min(best, time.perf_counter() - start)
    return BATCH / best


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 of a frozen ``Teacher``-like ``model`` on ``images [N, 3, 32, 32]`` in [0, 1]."""
    logits = torch.cat([model(images[i : i + 500]) for i in range(0, len(images), 500)])
    return float((logits.argmax(1) == labels).float().mean())


def real_in_look(images: torch.Tensor, look: str, world_looks: tuple[str, ...], seed: int) -> torch.Tensor:
    """Real images rendered in ``look``, or for the look-free set in a seeded mix of ``world_looks``."""
    if look == LOOK_FREE:
        return render_random_looks(images, world_looks, torch.Generator().manual_seed(seed))[0]
    return render_looks(images, torch.full((len(images),), LOOKS.index(look)))


def prompt_sets(world_looks: tuple[str, ...]) -> list[str]:
    """The prompt sets of a world: look-free, then one per look when the generator knows several."""
    return [LOOK_FREE] + (list(world_looks) if len(world_looks) > 1 else [])


def measure_set(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    judge,
    looks_model,
    teacher,
    world_looks: tuple[str, ...],
    seed: int,
) -> dict:
    """Every measure of one prompt set's samples ``images [N, 3, 32, 32]`` with classes ``labels [N]``."""
    test, test_labels = load_public("test")
    train, _ = load_public("train")
    real_test = real_in_look(test, name, world_looks, seed)
    real_train = real_in_look(train[: len(images)], name, world_looks, seed + 1)
    _, real_feats = judge_outputs(judge, real_test)
    _, train_feats = judge_outputs(judge, real_train)
    logits, feats = judge_outputs(judge, images)
    correct = logits.argmax(1) == labels
    div_mean, div_per_class = diversity_ratio(feats, labels, real_feats, test_labels)
    mix = look_fractions(looks_model, images)
    return {
        "prompt_example": look_prompt(7, None if name == LOOK_FREE else name),
        "n": len(images),
        "class_adherence": float(correct.float().mean()),
        "adherence_per_class": {
            CLASS_NAMES[c]: float(correct[labels == c].float().mean()) for c in range(10)
        },
        "frechet_vs_real_test": frechet_distance(feats, real_feats),
        "frechet_real_train_vs_test": frechet_distance(train_feats, real_feats),
        "diversity_ratio": div_mean,
        "diversity_ratio_per_class": {CLASS_NAMES[c]: r for c, r in enumerate(div_per_class)},
        "look_mix": mix,
        "share_in_named_look": None if name == LOOK_FREE else mix[name],
        "teacher_accuracy": accuracy(teacher, images, labels),
        "teacher_accuracy_on_real_public_test_in_look": accuracy(teacher, real_test, test_labels),
    }


def prior_at_scale(
    pipe,
    scale: float,
    labels: torch.Tensor,
    seeds: dict[str, list[int]],
    steps: int,
    *,
    judge,
    looks_model,
    teacher,
) -> dict:
    """The look-free prompt's look mix and the teacher's accuracy on it and on the look-naming
    ``KD_LOOK`` prompt at CFG ``scale`` (the same seeds as the main sets, so scales pair up)."""
    out = {"guidance_scale": scale}
    for name in (LOOK_FREE, KD_LOOK):
        look = None if name == LOOK_FREE else name
        images = sample_many(pipe, [look_prompt(int(c), look) for c in labels], seeds[name], steps, scale)
        out[name] = {
            "class_adherence": judge_accuracy(judge, images, labels),
            "look_mix": look_fractions(looks_model, images),
            "teacher_accuracy": accuracy(teacher, images, labels),
        }
    return out


def look_classifier_accuracy(looks_model) -> dict[str, float]:
    """The look classifier's accuracy on PUBLIC "test" (held out from its training) rendered in each look."""
    test, _ = load_public("test")
    out = {}
    for index, look in enumerate(LOOKS):
        rendered = render_looks(test, torch.full((len(test),), index))
        out[look] = accuracy(looks_model, rendered, torch.full((len(test),), index))
    return out


def kd_row_overrides(out_root: Path, extra: list[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """``(row, prompt template, config overrides)`` of the two KD rows: the world's config unguided
    (no teacher guidance, so no adversarial term either), no CutMix, 1,000 images of the prompt."""
    rows = []
    for name, template in (
        (f"kd_unguided_{KD_LOOK}", look_prompt(0, KD_LOOK).replace(CLASS_NAMES[0], "{label}")),
        ("kd_unguided_look_free", look_prompt(0).replace(CLASS_NAMES[0], "{label}")),
    ):
        overrides = [
            "guidance.mode=none",
            "guidance.adv_weight=0",
            "cutmix.enabled=false",
            f"generator.prompt_template={template}",
            f"synth.images_per_class={KD_IMAGES_PER_CLASS}",
            f"out_dir={out_root / name}",
            *(extra or []),
        ]
        rows.append((name, template, overrides))
    return rows


def kd_rows(world: str, out_root: Path, extra: list[str] | None = None) -> dict[str, dict]:
    """KD on 1,000 unguided samples of the look-naming ``KD_LOOK`` prompt and of the look-free prompt.

    The method's own pipeline with the world's shipped config, guidance and CutMix off: each run reads
    the PRIVATE test split once (student and teacher top-1). Run folders go under ``out_root``; ``extra``
    config overrides come last (smoke runs: smaller budgets).
    """
    from diffdfkd.bench import WORLD_CONFIGS
    from diffdfkd.config import load_config
    from diffdfkd.pipeline import run_experiment
    from diffdfkd.synth.dataset import load_synthetic

    looks_model = load_look_classifier()
    rows = {}
    for name, template, overrides in kd_row_overrides(out_root, extra):
        config = load_config(WORLD_CONFIGS[world], overrides)
        summary = run_experiment(config, progress=False)
        data = load_synthetic(Path(config.out_dir) / "synth")
        rows[name] = {
            "prompt_template": template,
            "overrides": overrides,
            "synthetic_images": summary["synthetic_images"],
            "student": summary["student"],
            "student_top1_private_test": summary["student_top1"],
            "teacher_top1_private_test": summary["teacher_top1"],
            "teacher_accuracy_on_synthetic": summary["teacher_accuracy_on_synthetic"],
            "look_mix_of_synthetic": look_fractions(looks_model, data.images),
            "seconds": summary["seconds"],
        }
    return rows


def goals(results: dict) -> list[tuple[str, str, bool]]:
    """The issue's "done when" checks that this bench measures: (goal, measured, met)."""
    sets = results["sets"]
    looks = [s for s in sets if s != LOOK_FREE]
    out = []
    if looks:
        worst = min(looks, key=lambda s: sets[s]["class_adherence"])
        value = sets[worst]["class_adherence"]
        out.append(
            (
                "class adherence >= 0.90 for every look (look-naming prompts)",
                f"min {value:.3f} ({worst})",
                value >= 0.9,
            )
        )
    lc = results["look_classifier_public_test_accuracy"]
    mean_lc = sum(lc.values()) / len(lc)
    out.append(
        (
            "look classifier >= 0.95 on held-out PUBLIC renderings",
            f"{mean_lc:.3f} (min {min(lc.values()):.3f})",
            mean_lc >= 0.95,
        )
    )
    for scale, look_free, low_res in prior_measures(results):
        where = f"CFG {scale:g}" + (" (the prior itself)" if scale == 1 else "")
        share = look_free["look_mix"][KD_LOOK]
        out.append(
            (f"look-free prompt, {where}: 10-40 % low-resolution look", f"{share:.3f}", 0.1 <= share <= 0.4)
        )
        gap = low_res["teacher_accuracy"] - look_free["teacher_accuracy"]
        out.append(
            (
                f"{where}: teacher >= 10 points more accurate on unguided low-res samples than on the look-free mix",
                f"{100 * gap:+.1f} points",
                gap >= 0.1,
            )
        )
    return out  # fmt: skip


def prior_measures(results: dict) -> list[tuple[float, dict, dict]]:
    """``(CFG scale, look-free set, low-resolution set)`` at the sampler's scale, then at each prior scale."""
    sets = results["sets"]
    if KD_LOOK not in sets:
        return []
    rows = [(results["sampler"]["guidance_scale"], sets[LOOK_FREE], sets[KD_LOOK])]
    rows += [
        (p["guidance_scale"], p[LOOK_FREE], p[KD_LOOK]) for p in results.get("prior_by_guidance_scale", [])
    ]
    return rows


def _markdown(results: dict) -> str:
    s = results["sampler"]
    lines = [
        f"# World `{results['world']}`: generator benchmark",
        "",
        f"Generator: `{results['generator']}`; digit judge: `{results['judge']}`; look classifier: shipped. "
        f"Sampler: {s['scheduler']}, {s['steps']} steps, classifier-free guidance {s['guidance_scale']}, "
        f"{results['n_per_class']} samples per class and prompt set. Machine: {results['machine']}, "
        f"torch threads {results['torch_threads']}.",
        f"Command: `{results['command']}`",
        "",
        "| prompt set | example prompt | class adherence (judge) | Frechet vs real PUBLIC test in the look | floor: real train vs test | diversity ratio | share in the named look | teacher acc. on samples | teacher acc. on real PUBLIC test in the look |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, m in results["sets"].items():
        share = "-" if m["share_in_named_look"] is None else f"{m['share_in_named_look']:.3f}"
        lines.append(
            f"| {name} | {m['prompt_example']} | {m['class_adherence']:.3f} | {m['frechet_vs_real_test']:.2f} "
            f"| {m['frechet_real_train_vs_test']:.2f} | {m['diversity_ratio']:.2f} | {share} "
            f"| {m['teacher_accuracy']:.3f} | {m['teacher_accuracy_on_real_public_test_in_look']:.3f} |"
        )
    mix = results["sets"][LOOK_FREE]["look_mix"]
    lc = results["look_classifier_public_test_accuracy"]
    lines += [
        "",
        "Look mix of the look-free class prompts (look classifier): "
        + ", ".join(f"{k} {v:.3f}" for k, v in mix.items()),
        "",
        "Look classifier on held-out PUBLIC test renderings: " + ", ".join(f"{k} {v:.3f}" for k, v in lc.items()),
        "",
    ]  # fmt: skip
    if prior_measures(results):
        lines += [
            "The look-free prior by classifier-free guidance scale (same seeds at every scale; at 1 the samples "
            "come from the generator's own conditional distribution, larger scales sharpen each prompt "
            "towards its most typical images):",
            "",
            "| CFG scale | look-free: class adherence | look-free: share of the low-resolution look | look-free: teacher acc. | low-resolution prompt: teacher acc. | gap (points) |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for scale, look_free, low_res in sorted(prior_measures(results), key=lambda r: r[0]):
            gap = low_res["teacher_accuracy"] - look_free["teacher_accuracy"]
            lines.append(
                f"| {scale:g} | {look_free['class_adherence']:.3f} | {look_free['look_mix'][KD_LOOK]:.3f} "
                f"| {look_free['teacher_accuracy']:.3f} | {low_res['teacher_accuracy']:.3f} | {100 * gap:+.1f} |"
            )
        lines.append("")
    lines += [
        f"CPU sampling speed, batch {BATCH}, 1 thread (best of 3): {results['images_per_second']:.1f} images/s "
        f"(1-min load average {results['load_average_1min']} on {os.cpu_count()} cores). "
        + (
            f"Generator training: {results['training_seconds']['total'] / 60:.1f} min on "
            f"{results['training_threads']} torch thread(s)."
            if results["training_seconds"]
            else "Generator training time: unknown (no build_info.json)."
        ),
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]  # fmt: skip
    lines += [f"| {g} | {v} | {'yes' if ok else 'NO'} |" for g, v, ok in goals(results)]
    if results.get("kd"):
        lines += [
            "",
            "KD rows (reported: each reads the PRIVATE test split once), the method's pipeline unguided, "
            f"{KD_IMAGES_PER_CLASS * 10} images:",
            "",
            "| row | prompt | student top-1 (PRIVATE test) | teacher acc. on the synthetic set | its look mix |",
            "|---|---|---|---|---|",
        ]
        for name, row in results["kd"].items():
            mix = ", ".join(f"{k} {v:.2f}" for k, v in row["look_mix_of_synthetic"].items() if v >= 0.01)
            lines.append(
                f"| {name} | {row['prompt_template']} | {row['student_top1_private_test']:.4f} "
                f"| {row['teacher_accuracy_on_synthetic']:.3f} | {mix} |"
            )
    lines += ["", "![samples](grid.png) one row per prompt set (in the table's order): classes zero..nine, seeds 0 and 1.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Benchmark a digits world's generator.")
    parser.add_argument("--world", default="digits", help="digits or digits-mnist (default: %(default)s)")
    parser.add_argument("--generator", type=Path, default=None, help="pipeline folder (default: the world's)")
    parser.add_argument("--judge", type=Path, default=None, help="digit judge weights (default: the world's)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: results/world-<world>)"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="sampling steps (default: %(default)s)"
    )
    parser.add_argument(
        "--guidance", type=float, default=DEFAULT_GUIDANCE, help="CFG scale (default: %(default)s)"
    )
    parser.add_argument(
        "--n-per-class", type=int, default=30, help="samples per class and set (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first sample seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument(
        "--prior-scales", type=float, nargs="*", default=list(PRIOR_SCALES),
        help="CFG scales of the look-free prior's extra measurement (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--kd", action="store_true", help="also the two KD rows (reads PRIVATE test twice)")
    parser.add_argument(
        "--kd-runs", type=Path, default=Path("runs/world_bench"), help="KD run folders (default: %(default)s)"
    )
    parser.add_argument("--kd-overrides", nargs="*", default=[], help="extra config overrides of the KD runs")
    args = parser.parse_args(argv)  # fmt: skip
    torch.set_num_threads(args.threads)
    world = get_world(args.world)
    out = args.out or RESULTS_ROOT / f"world-{world.name}"

    generator = args.generator or world.generator
    pipe = load_generator(generator)
    judge = load_judge(world.name, args.judge)
    looks_model = load_look_classifier()
    teacher = build_teacher(world.teacher_spec())
    n = args.n_per_class * len(CLASS_NAMES)
    labels = torch.arange(n) % len(CLASS_NAMES)
    sets, grid, seeds = {}, [], {}
    for k, name in enumerate(prompt_sets(world.looks)):
        look = None if name == LOOK_FREE else name
        seeds[name] = [args.seed + 10**5 * k + i for i in range(n)]
        images = sample_many(
            pipe, [look_prompt(int(c), look) for c in labels], seeds[name], args.steps, args.guidance
        )
        sets[name] = measure_set(
            name, images, labels, judge=judge, looks_model=looks_model, teacher=teacher,
            world_looks=world.looks, seed=args.seed,
        )  # fmt: skip
        grid.append(images[:20])
        print(name, json.dumps({k: v for k, v in sets[name].items() if not isinstance(v, dict)}), flush=True)
    prior = []
    if KD_LOOK in sets:
        for scale in args.prior_scales:
            prior.append(
                prior_at_scale(
                    pipe,
                    scale,
                    labels,
                    seeds,
                    args.steps,
                    judge=judge,
                    looks_model=looks_model,
                    teacher=teacher,
                )
            )
            print("prior", json.dumps(prior[-1]), flush=True)
    speed = sampling_speed(pipe, args.steps, args.guidance)
    load_average = os.getloadavg()[0]

    info_path = generator / BUILD_INFO
    training, threads = None, None
    if info_path.exists():
        info = json.loads(info_path.read_text())
        training = dict(info["train_seconds"])
        training["total"] = sum(v for v in training.values() if v is not None)
        threads = info.get("torch_threads")
    test_images, test_labels = load_public("test")
    results = {
        "world": world.name,
        "generator": str(generator.relative_to(Path.cwd()) if generator.is_relative_to(Path.cwd()) else generator),
        "judge": str(args.judge or world.name),
        "command": " ".join(["python benchmarks/world_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)",
        "torch_threads": torch.get_num_threads(),
        "sampler": {"scheduler": "DDPM", "steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed},
        "n_per_class": args.n_per_class,
        "judge_public_test_accuracy_plain": judge_accuracy(judge, test_images, test_labels),
        "look_classifier_public_test_accuracy": look_classifier_accuracy(looks_model),
        "sets": sets,
        "prior_by_guidance_scale": prior,
        "images_per_second": speed,
        "load_average_1min": round(load_average, 2),
        "training_seconds": training,
        "training_threads": threads,
        "kd": kd_rows(world.name, args.kd_runs / world.name, args.kd_overrides) if args.kd else None,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(results))
    save_grid(torch.cat(grid), len(grid), out / "grid.png")
    print(_markdown(results))
    return results


def save_grid(images: torch.Tensor, rows: int, path: Path, scale: int = 2) -> None:
    """Save ``[rows * cols, 3, H, W]`` images in [0, 1] as one PNG grid (1-pixel grey gaps)."""
    from PIL import Image

    cols = images.shape[0] // rows
    _, _, h, w = images.shape
    canvas = torch.full((3, rows * (h + 1) + 1, cols * (w + 1) + 1), 0.5)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = image
    array = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
