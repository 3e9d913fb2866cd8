"""``diffdfkd run``, ``demo`` and ``bench``: the whole job, once or over seeds and rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffdfkd.cli.common import add_command, add_config_args, load_args_config


def _print_run(summary: dict, out: str) -> None:
    print(f"teacher top-1 on {summary['test_data']}: {summary['teacher_top1']:.4f}")
    print(f"student top-1 on {summary['test_data']}: {summary['student_top1']:.4f} (final epoch)")
    print(f"seconds: {summary['seconds']}")
    print(f"report: {Path(out) / 'report.html'} (and report.md)")


def cmd_run(args: argparse.Namespace) -> None:
    from diffdfkd.pipeline import run_experiment

    config = load_args_config(args)
    _print_run(run_experiment(config, overwrite=args.overwrite), config.out_dir)


def add_run(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "run", "synthesize -> distill -> evaluate -> report, in one resumable command")
    add_config_args(p)
    p.set_defaults(func=cmd_run)


def cmd_demo(args: argparse.Namespace) -> None:
    from diffdfkd.pipeline import demo_config, run_experiment

    config = demo_config(out_dir=args.out, quick=args.quick)
    _print_run(run_experiment(config, overwrite=args.overwrite), config.out_dir)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", "the whole method in the shipped digits world, written to runs/demo/")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run in a minute or two")
    p.add_argument("--overwrite", action="store_true", help="replace a run made with another config")
    p.set_defaults(func=cmd_demo)


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


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "bench", "DiffDFKD against unguided diffusion, DeepInversion and real-data KD, over seeds"
    )
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
