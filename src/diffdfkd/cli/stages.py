"""``diffdfkd check``, ``synthesize``, ``adapt-generator`` and ``distill``: one stage each."""

from __future__ import annotations

import argparse

from diffdfkd.cli.common import add_command, add_config_args, add_data_args, load_args_config


def cmd_check(args: argparse.Namespace) -> None:
    from diffdfkd.check import check

    report = check(
        load_args_config(args),
        args.stage,
        overwrite=args.overwrite,
        data=args.data,
        allow_partial=args.allow_partial,
    )
    print("\n".join(report.lines))
    print(f"check passed: `diffdfkd {args.stage}` with this config can start")


def add_check(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "check",
        "check a config before running it, in seconds: values, teacher, student, generator folder, "
        "prompts, eval folder, output folders; prints the plan; exit code 0 or 2",
    )
    add_config_args(p)
    p.add_argument(
        "--stage", default="run", choices=["run", "synthesize", "distill"], help="the command to check for"
    )
    add_data_args(p)
    p.set_defaults(func=cmd_check)


def cmd_synthesize(args: argparse.Namespace) -> None:
    from diffdfkd.check import check
    from diffdfkd.experiment import Experiment
    from diffdfkd.synth.run import synthesize

    experiment = Experiment.build(load_args_config(args))
    check(experiment, "synthesize", overwrite=args.overwrite)
    out = synthesize(experiment, shard=args.shard, num_shards=args.num_shards, overwrite=args.overwrite)
    summary = out / "summary.json"
    print(summary.read_text() if summary.is_file() else f"shard written to {out}; other shards still missing")
    print(f"dataset: {out}")


def add_synthesize(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "synthesize", "teacher-guided synthesis of a dataset (resumable; rerun to continue)")
    add_config_args(p)
    p.add_argument(
        "--shard", type=int, default=None, help="this process's shard (default: RANK under torchrun)"
    )
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE)")
    p.set_defaults(func=cmd_synthesize)


def cmd_adapt_generator(args: argparse.Namespace) -> None:
    from diffdfkd.synth.adapt import AdaptSettings, adapt_generator

    settings = AdaptSettings(steps=args.steps, lr=args.lr, anchor=args.anchor, lora_rank=args.lora_rank)
    info = adapt_generator(load_args_config(args), args.out, settings)
    print(
        f"adapted generator: {args.out} ({info['seconds']:g} s; teacher p(target) at the last step "
        f"{info['last']['p_target']:.3f}); synthesize with generator.path={args.out}"
    )


def add_adapt_generator(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "adapt-generator",
        "adapt the config's generator to its teacher without data (beyond the paper; resumable): a new "
        "pipeline folder for generator.path. Helps a generator that has never drawn the teacher's domain "
        "and hurts one that has (BENCHMARKS.md)",
    )
    add_config_args(p, overwrite=False)
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


def cmd_distill(args: argparse.Namespace) -> None:
    from diffdfkd.check import check
    from diffdfkd.experiment import Experiment
    from diffdfkd.pipeline import claim_output, distill
    from diffdfkd.synth.dataset import load_synthetic

    experiment = Experiment.build(load_args_config(args))
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


def add_distill(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "distill", "distil a student from the teacher on a synthetic dataset")
    add_config_args(p)
    add_data_args(p)
    p.set_defaults(func=cmd_distill)
