"""The ``diffdfkd`` command line: parses arguments, builds configs and calls the library.

One module per group of commands, each command's ``cmd_<name>`` beside the ``add_<name>`` that adds its
parser: ``world`` (the shipped worlds' parts), ``teacher`` (train-teacher, evaluate), ``stages`` (check,
synthesize, adapt-generator, distill), ``jobs`` (run, demo, bench). Each command imports the library
parts it needs when it runs (the top layer, so no cycle is dodged): ``diffdfkd --help`` and
``diffdfkd world list`` start without loading torch, diffusers and the models.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading

from diffdfkd import __version__
from diffdfkd.cli.common import Formatter
from diffdfkd.cli.jobs import add_bench, add_demo, add_run
from diffdfkd.cli.stages import add_adapt_generator, add_check, add_distill, add_synthesize
from diffdfkd.cli.teacher import add_evaluate, add_train_teacher
from diffdfkd.cli.world import add_world
from diffdfkd.errors import UserError

# In the order --help lists them.
COMMANDS = (
    add_world,
    add_train_teacher,
    add_evaluate,
    add_check,
    add_synthesize,
    add_adapt_generator,
    add_distill,
    add_run,
    add_demo,
    add_bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffdfkd",
        description="Data-free knowledge distillation with diffusion models (DiffDFKD).",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"diffdfkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
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
