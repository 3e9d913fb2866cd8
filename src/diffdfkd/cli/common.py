"""What every command's parser shares: the help formatter, the config and data flags, the config."""

from __future__ import annotations

import argparse

OVERRIDES_HELP = "config overrides of the form key.sub=value (e.g. synth.batch_size=40)"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default in --help."""


def add_command(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=Formatter)


def add_config_args(p: argparse.ArgumentParser, overwrite: bool = True) -> None:
    p.add_argument("--config", default=None, help="YAML experiment config (e.g. configs/digits.yaml)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace outputs made with another config")
    p.add_argument(
        "overrides", nargs="*", help=OVERRIDES_HELP + "; flags may come before, among or after them"
    )


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="", help="synthetic dataset folder; empty: the config's synth output")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="distil on an unfinished dataset's images made so far (it says how many)",
    )


def load_args_config(args: argparse.Namespace):
    """The ``ExperimentConfig`` of ``--config`` with the command line's overrides."""
    from diffdfkd.config import load_config

    return load_config(args.config, args.overrides)
