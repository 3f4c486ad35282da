"""The `free-bench` command line. Each subcommand: a parser builder and a runner, registered below."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from free_bench.errors import FreeBenchError

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str, str]
COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help: str,
    example: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Register a subcommand: its argument builder, its runner, a help line and an example call."""
    COMMANDS[name] = (add_args, run, help, example)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="free-bench",
        description="Early-exit vision-language models (FREE and baselines), measured on the clock.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, _, help_text, example) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from free_bench import commands  # noqa: F401  (registers the subcommands)

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except FreeBenchError as e:
        print(f"free-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130
