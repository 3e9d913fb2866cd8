"""``diffdfkd train-teacher`` and ``diffdfkd evaluate``: a world's teacher, trained and measured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffdfkd.cli.common import add_command, add_config_args, load_args_config


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


def add_train_teacher(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train-teacher", "train a zoo model on a world split with cross-entropy")
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


def _print_report(report: dict, class_names: tuple[str, ...]) -> None:
    print(f"top-1: {report['top1']:.4f}  ({report['n']} images)")
    print("per-class accuracy:")
    for name, acc in zip(class_names, report["per_class"], strict=True):
        print(f"  {name:>12}: {acc:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for name, row in zip(class_names, report["confusion"], strict=True):
        print(f"  {name:>12}: " + " ".join(f"{v:4d}" for v in row))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from diffdfkd.check.folders import check_test_data
    from diffdfkd.config import replace
    from diffdfkd.evaluate import evaluate
    from diffdfkd.experiment import Experiment
    from diffdfkd.models.teacher import load_teacher
    from diffdfkd.pipeline import load_test_data
    from diffdfkd.worlds import get_world

    config = load_args_config(args)
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


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "evaluate",
        "top-1, per-class accuracy and confusion matrix of the configured teacher (or of --weights, "
        "with the teacher's class names and input size)",
    )
    add_config_args(p, overwrite=False)
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
