"""The ``diffdfkd`` command line: parses arguments, builds configs and calls the library.

Each command imports the library parts it needs when it runs (the top layer, so no cycle is dodged):
``diffdfkd --help`` and ``diffdfkd world list`` start without loading torch, diffusers and the models.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import threading
from pathlib import Path

from diffdfkd import __version__
from diffdfkd.errors import UserError

OVERRIDES_HELP = "config overrides of the form key.sub=value (e.g. synth.batch_size=40)"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default in --help."""


def _add(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)


# --- world -------------------------------------------------------------------------------------------


def cmd_world_list(args: argparse.Namespace) -> None:
    from diffdfkd.worlds import get_world, list_worlds

    for name in list_worlds():
        world = get_world(name)
        print(f"{world.name}: {world.description}")
        print(f"  classes:   {', '.join(world.class_names)}")
        print(f"  splits:    {', '.join(world.splits())}")
        for part, path in (("teacher", world.teacher_weights), ("generator", world.generator)):
            state = "shipped" if path.exists() else "missing"
            print(f"  {part + ':':<10} {path} ({state})")
        print(f"  teacher architecture: {world.teacher_arch}")


def cmd_world_build_data(args: argparse.Namespace) -> None:
    from diffdfkd.worlds.emoji_build import build_emoji_data

    if args.world != "emoji":
        raise UserError(
            f"world {args.world!r} needs no data build (its data ships in Python packages); only emoji does"
        )
    summary = build_emoji_data(
        Path(args.cache) if args.cache else None, ship_to=Path(args.out) if args.out else None
    )
    print(json.dumps(summary, indent=2))


def cmd_world_build_generator(args: argparse.Namespace) -> None:
    from diffdfkd.worlds.generator import build_generator

    out = args.out or f"runs/{args.world}_generator"
    out = build_generator(out, world=args.world, quick=args.quick, seed=args.seed, work_dir=args.work_dir)
    print(f"generator pipeline written to {out}")


def cmd_world_build_judge(args: argparse.Namespace) -> None:
    from diffdfkd.worlds.judge import build_judge

    path, metrics = build_judge(args.name, args.out or None, seed=args.seed)
    print(json.dumps(metrics, indent=2))
    print(f"{args.name} classifier written to {path}")


def cmd_world_build_tiny_decoder(args: argparse.Namespace) -> None:
    from diffdfkd.worlds import get_world
    from diffdfkd.worlds.tiny_decoder import QUICK, TinyDecoderConfig, build_tiny_decoder, public_renderings

    world = get_world(args.world)
    generator = Path(args.generator) if args.generator else world.generator
    images = public_renderings(world)
    cfg = QUICK if args.quick else TinyDecoderConfig()
    out = build_tiny_decoder(generator, images, out=args.out or None, cfg=cfg, seed=args.seed)
    print(f"tiny guidance decoder written to {out}")


# --- teacher training and evaluation -----------------------------------------------------------------


def cmd_train_teacher(args: argparse.Namespace) -> None:
    from diffdfkd.config import DistillConfig, from_dict, parse_overrides, to_dict
    from diffdfkd.models import export_weights
    from diffdfkd.train import teacher_recipe, train_classifier
    from diffdfkd.worlds import get_world

    world = get_world(args.world)
    arch = args.arch or world.teacher_arch
    data = to_dict(teacher_recipe(args.world)) | parse_overrides(args.overrides)
    recipe = from_dict(DistillConfig, data)
    model, result = train_classifier(
        args.world, arch, split=args.split, recipe=recipe, out_dir=args.out, seed=args.seed, limit=args.limit
    )
    weights = export_weights(model, Path(args.out) / "teacher.safetensors", half=args.half)
    print(f"trained {arch} on {args.world} {args.split}: last-epoch holdout accuracy {result.holdout_top1}")
    print(f"weights: {weights}")


def _print_report(report: dict, class_names: tuple[str, ...]) -> None:
    print(f"top-1: {report['top1']:.4f}  ({report['n']} images)")
    print("per-class accuracy:")
    for name, acc in zip(class_names, report["per_class"], strict=True):
        print(f"  {name:>12}: {acc:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for name, row in zip(class_names, report["confusion"], strict=True):
        print(f"  {name:>12}: " + " ".join(f"{v:4d}" for v in row))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from diffdfkd.check import check_test_data
    from diffdfkd.config import replace
    from diffdfkd.evaluate import evaluate
    from diffdfkd.experiment import Experiment
    from diffdfkd.models.teacher import load_teacher
    from diffdfkd.pipeline import load_test_data
    from diffdfkd.worlds import get_world

    config = _config(args)
    if args.folder:
        config = replace(config, eval_folder=args.folder)
    # the configured teacher: its classes, input size, normalisation
    teacher = Experiment.build(config).teacher
    model, name = (
        teacher,
        f"teacher {config.teacher.weights or 'shipped with the ' + config.world + ' world'}",
    )
    if args.weights:
        arch = args.arch or config.teacher.arch or get_world(config.world).teacher_arch
        model = load_teacher(
            arch, args.weights, class_names=teacher.class_names, input_size=teacher.input_size
        )
        name = f"{arch} {args.weights}"
    check_test_data(config, teacher, split=args.split)
    images, labels, source = load_test_data(config, teacher.class_names, split=args.split)
    report = evaluate(model, images, labels)
    print(f"model: {name}; data: {source}")
    _print_report(report, teacher.class_names)
    if args.json:
        Path(args.json).write_text(json.dumps(report | {"data": source}, indent=2) + "\n")


# --- synthesis, distillation, the whole job ------------------------------------------------------------


def _config(args: argparse.Namespace):
    from diffdfkd.config import load_config

    return load_config(args.config, args.overrides)


def cmd_check(args: argparse.Namespace) -> None:
    from diffdfkd.check import check

    report = check(
        _config(args), args.stage, overwrite=args.overwrite, data=args.data, allow_partial=args.allow_partial
    )
    print("\n".join(report.lines))
    print(f"check passed: `diffdfkd {args.stage}` with this config can start")


def cmd_synthesize(args: argparse.Namespace) -> None:
    from diffdfkd.check import check
    from diffdfkd.experiment import Experiment
    from diffdfkd.synth.run import synthesize

    experiment = Experiment.build(_config(args))
    check(experiment, "synthesize", overwrite=args.overwrite)
    out = synthesize(experiment, shard=args.shard, num_shards=args.num_shards, overwrite=args.overwrite)
    summary = out / "summary.json"
    print(summary.read_text() if summary.is_file() else f"shard written to {out}; other shards still missing")
    print(f"dataset: {out}")


def cmd_adapt_generator(args: argparse.Namespace) -> None:
    from diffdfkd.synth.adapt import AdaptSettings, adapt_generator

    settings = AdaptSettings(steps=args.steps, lr=args.lr, anchor=args.anchor, lora_rank=args.lora_rank)
    info = adapt_generator(_config(args), args.out, settings)
    print(
        f"adapted generator: {args.out} ({info['seconds']:g} s; teacher p(target) at the last step "
        f"{info['last']['p_target']:.3f}); synthesize with generator.path={args.out}"
    )


def cmd_distill(args: argparse.Namespace) -> None:
    from diffdfkd.check import check
    from diffdfkd.experiment import Experiment
    from diffdfkd.pipeline import claim_output, distill
    from diffdfkd.synth.dataset import load_synthetic

    experiment = Experiment.build(_config(args))
    check(experiment, "distill", overwrite=args.overwrite, data=args.data, allow_partial=args.allow_partial)
    data = load_synthetic(args.data or experiment.synth_dir, allow_partial=args.allow_partial)
    if args.allow_partial:
        print(f"distilling on the {len(data)} images made so far (--allow-partial)")
    claim_output(experiment.config, overwrite=args.overwrite, data_id=data.identity)
    result = distill(experiment, data)
    print(f"student weights: {result.weights}")
    print(
        f"last-epoch agreement with the teacher on held-out synthetic images: {result.fit.holdout_agreement}"
    )


def _print_run(summary: dict, out: str) -> None:
    print(f"teacher top-1 on {summary['test_data']}: {summary['teacher_top1']:.4f}")
    print(f"student top-1 on {summary['test_data']}: {summary['student_top1']:.4f} (final epoch)")
    print(f"seconds: {summary['seconds']}")
    print(f"report: {Path(out) / 'report.html'} (and report.md)")


def cmd_run(args: argparse.Namespace) -> None:
    from diffdfkd.pipeline import run_experiment

    config = _config(args)
    _print_run(run_experiment(config, overwrite=args.overwrite), config.out_dir)


def cmd_demo(args: argparse.Namespace) -> None:
    from diffdfkd.pipeline import demo_config, run_experiment

    config = demo_config(out_dir=args.out, quick=args.quick)
    _print_run(run_experiment(config, overwrite=args.overwrite), config.out_dir)


def cmd_bench(args: argparse.Namespace) -> None:
    from diffdfkd.bench import bench_budget, run_bench

    only = [name.strip() for name in args.only.split(",") if name.strip()] or None
    budget = bench_budget(args.world, args.quick, args.images_per_class)
    report = run_bench(
        args.world, args.seeds, args.out, quick=args.quick, only=only, budget=budget, overwrite=args.overwrite
    )
    print(
        (Path(args.out) / "results.md").read_text() if (Path(args.out) / "results.md").is_file() else report
    )


def _add_config_args(p: argparse.ArgumentParser, overwrite: bool = True) -> None:
    p.add_argument("--config", default=None, help="YAML experiment config (e.g. configs/digits.yaml)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace outputs made with another config")
    p.add_argument(
        "overrides", nargs="*", help=OVERRIDES_HELP + "; flags may come before, among or after them"
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="", help="synthetic dataset folder; empty: the config's synth output")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="distil on an unfinished dataset's images made so far (it says how many)",
    )


# --- parser ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffdfkd",
        description="Data-free knowledge distillation with diffusion models (DiffDFKD).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"diffdfkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    world = _add(sub, "world", "the shipped worlds: list them, or build their data, generators and judges")
    world_sub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    p = _add(world_sub, "list", "list the shipped worlds and their parts")
    p.set_defaults(func=cmd_world_list)
    p = _add(
        world_sub,
        "build-data",
        "fetch (npm pack, pinned, integrity-checked) and render the emoji world's data",
    )
    p.add_argument(
        "--world", default="emoji", help="whose data: emoji (the digits worlds' ships in Python packages)"
    )
    p.add_argument(
        "--cache", default="", help="folder for tarballs and PUBLIC arrays; empty: $DIFFDFKD_CACHE/emoji"
    )
    p.add_argument(
        "--out", default="", help="PRIVATE splits file; empty: overwrite the shipped emoji_private.npz"
    )
    p.set_defaults(func=cmd_world_build_data)

    p = _add(world_sub, "build-generator", "train a world's text-to-image generator on its PUBLIC data")
    p.add_argument(
        "--world", default="digits", help="whose generator: digits (six looks), digits-mnist or emoji"
    )
    p.add_argument(
        "--out", default="", help="folder for the diffusers pipeline; empty: runs/<world>_generator"
    )
    p.add_argument("--work-dir", default=None, help="folder for checkpoints (default: <out>.work)")
    p.add_argument("--quick", action="store_true", help="a tiny generator in under a minute (for tests)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.set_defaults(func=cmd_world_build_generator)
    p = _add(world_sub, "build-judge", "train a measuring classifier on a world's PUBLIC data")
    p.add_argument(
        "--name",
        default="digits",
        help="digits or digits-mnist (digit judges), looks, emoji (class judge) or emoji-styles",
    )
    p.add_argument("--out", default="", help="weights file; empty: overwrite the shipped one")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.set_defaults(func=cmd_world_build_judge)
    p = _add(
        world_sub,
        "build-tiny-decoder",
        "distil a tiny decoder for the guidance gradient (generator.guidance_decoder=pipeline) from a "
        "generator's VAE, on the world's PUBLIC images in the looks its generator was trained on",
    )
    p.add_argument("--world", default="digits", help="world name (see `diffdfkd world list`)")
    p.add_argument("--generator", default="", help="pipeline folder; empty: the world's shipped generator")
    p.add_argument("--out", default="", help="output folder; empty: <generator>/vae_tiny")
    p.add_argument("--quick", action="store_true", help="a tiny, barely trained decoder (for tests)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.set_defaults(func=cmd_world_build_tiny_decoder)

    p = _add(sub, "train-teacher", "train a zoo model on a world split with cross-entropy")
    p.add_argument("--world", default="digits", help="world name (see `diffdfkd world list`)")
    p.add_argument("--arch", default="", help="zoo model name; empty: the world's teacher architecture")
    p.add_argument("--split", default="private:train", help="training split")
    p.add_argument(
        "--out", default="runs/teacher", help="output folder (checkpoints, logs, teacher.safetensors)"
    )
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    p.add_argument("--half", action="store_true", help="export fp16 weights (as shipped)")
    p.add_argument("overrides", nargs="*", help="training-recipe overrides such as epochs=5 lr=0.1")
    p.set_defaults(func=cmd_train_teacher)

    p = _add(
        sub,
        "evaluate",
        "top-1, per-class accuracy and confusion matrix of the configured teacher (or of --weights, "
        "with the teacher's class names and input size)",
    )
    _add_config_args(p, overwrite=False)
    p.add_argument(
        "--split",
        default="private:test",
        help="split of the config's world to evaluate on (when neither --folder nor eval_folder is set)",
    )
    p.add_argument(
        "--folder",
        default="",
        help="evaluate on this ImageFolder-style folder (sub-folders named after the classes); "
        "empty: the config's eval_folder, else the world's split",
    )
    p.add_argument(
        "--arch",
        default="",
        help="zoo model name of --weights; empty: teacher.arch, else the world's teacher's",
    )
    p.add_argument("--weights", default="", help="a model to evaluate instead of the configured teacher")
    p.add_argument("--json", default="", help="also write the report as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = _add(
        sub,
        "check",
        "check a config before running it, in seconds: values, teacher, student, generator folder, "
        "prompts, eval folder, output folders; prints the plan; exit code 0 or 2",
    )
    _add_config_args(p)
    p.add_argument(
        "--stage", default="run", choices=["run", "synthesize", "distill"], help="the command to check for"
    )
    _add_data_args(p)
    p.set_defaults(func=cmd_check)

    p = _add(sub, "synthesize", "teacher-guided synthesis of a dataset (resumable; rerun to continue)")
    _add_config_args(p)
    p.add_argument(
        "--shard", type=int, default=None, help="this process's shard (default: RANK under torchrun)"
    )
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE)")
    p.set_defaults(func=cmd_synthesize)

    p = _add(
        sub,
        "adapt-generator",
        "adapt the config's generator to its teacher without data (beyond the paper; resumable): a new "
        "pipeline folder for generator.path. Helps a generator that has never drawn the teacher's domain "
        "and hurts one that has (BENCHMARKS.md)",
    )
    _add_config_args(p, overwrite=False)
    p.add_argument("--out", required=True, help="the adapted pipeline's folder (new, or one to resume)")
    p.add_argument("--steps", type=int, default=150, help="adaptation steps, one mixing group each")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the UNet")
    p.add_argument("--anchor", type=float, default=1.0, help="weight of the term that keeps it a denoiser")
    p.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="0: train the whole UNet; R > 0: a LoRA adapter of rank R on its attention (peft), merged into "
        "the written UNet and also saved as pytorch_lora_weights.safetensors",
    )
    p.set_defaults(func=cmd_adapt_generator)

    p = _add(sub, "distill", "distil a student from the teacher on a synthetic dataset")
    _add_config_args(p)
    _add_data_args(p)
    p.set_defaults(func=cmd_distill)

    p = _add(sub, "run", "synthesize -> distill -> evaluate -> report, in one resumable command")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = _add(sub, "demo", "the whole method in the shipped digits world, written to runs/demo/")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in a minute or two")
    p.add_argument("--overwrite", action="store_true", help="replace a run made with another config")
    p.set_defaults(func=cmd_demo)

    p = _add(sub, "bench", "DiffDFKD against unguided diffusion, DeepInversion and real-data KD, over seeds")
    p.add_argument("--world", default="digits", help="world to compare in")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (mean and std are reported)")
    p.add_argument("--out", default="benchmarks/results/digits", help="results folder (runs resume from it)")
    p.add_argument("--only", default="", help="comma-separated row names (default: every row)")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    p.add_argument(
        "--images-per-class",
        type=int,
        default=None,
        help="the rows' budget (default: the world's bench budget)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo runs whose folder holds another config")
    p.set_defaults(func=cmd_bench)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may stand anywhere among the flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse hands the overrides after the first flag back as unknown: they belong to the others.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


class Terminated(BaseException):
    """SIGTERM, raised where the command is (as Ctrl-C raises KeyboardInterrupt), so that the same
    cleanup runs and the same message is printed."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _run_command(args)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; user errors, a full disk and a stop (Ctrl-C, SIGTERM) end in one line."""
    try:
        args.func(args)
    except (UserError, FileNotFoundError) as error:
        print(f"diffdfkd: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk anywhere (the stages' own writers say where)
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"diffdfkd: error: {error} (disk full); free space and rerun the same command: it resumes "
            f"where it stopped",
            file=sys.stderr,
        )
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(f"diffdfkd: {how}; rerun the same command to continue where it stopped", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
