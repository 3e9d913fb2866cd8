"""``diffdfkd world``: list the shipped worlds, or build their data, generators, judges and decoders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffdfkd.cli.common import add_command
from diffdfkd.errors import UserError


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


def add_world_list(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "list", "list the shipped worlds and their parts")
    p.set_defaults(func=cmd_world_list)


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


def add_world_build_data(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
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


def cmd_world_build_generator(args: argparse.Namespace) -> None:
    from diffdfkd.worlds.generator import build_generator

    out = args.out or f"runs/{args.world}_generator"
    out = build_generator(out, world=args.world, quick=args.quick, seed=args.seed, work_dir=args.work_dir)
    print(f"generator pipeline written to {out}")


def add_world_build_generator(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "build-generator", "train a world's text-to-image generator on its PUBLIC data")
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


def cmd_world_build_judge(args: argparse.Namespace) -> None:
    from diffdfkd.worlds.judge import build_judge

    path, metrics = build_judge(args.name, args.out or None, seed=args.seed)
    print(json.dumps(metrics, indent=2))
    print(f"{args.name} classifier written to {path}")


def add_world_build_judge(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "build-judge", "train a measuring classifier on a world's PUBLIC data")
    p.add_argument(
        "--name",
        default="digits",
        help="digits or digits-mnist (digit judges), looks, emoji (class judge) or emoji-styles",
    )
    p.add_argument("--out", default="", help="weights file; empty: overwrite the shipped one")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.set_defaults(func=cmd_world_build_judge)


def cmd_world_build_tiny_decoder(args: argparse.Namespace) -> None:
    from diffdfkd.worlds import get_world
    from diffdfkd.worlds.tiny_decoder import QUICK, TinyDecoderConfig, build_tiny_decoder, public_renderings

    world = get_world(args.world)
    generator = Path(args.generator) if args.generator else world.generator
    images = public_renderings(world)
    cfg = QUICK if args.quick else TinyDecoderConfig()
    out = build_tiny_decoder(generator, images, out=args.out or None, cfg=cfg, seed=args.seed)
    print(f"tiny guidance decoder written to {out}")


def add_world_build_tiny_decoder(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
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


def add_world(sub: argparse._SubParsersAction) -> None:
    world = add_command(
        sub, "world", "the shipped worlds: list them, or build their data, generators and judges"
    )
    world_sub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    for add in (
        add_world_list,
        add_world_build_data,
        add_world_build_generator,
        add_world_build_judge,
        add_world_build_tiny_decoder,
    ):
        add(world_sub)
