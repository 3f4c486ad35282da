"""The `free-bench` command line: the parser, logging set-up and `main`; subcommands in their modules.

Parsing imports no torch: every enumerated flag is an argparse `choices` (or a checking `type`), so a
wrong value is refused with the valid ones in well under a second, before any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys

from free_bench import __version__
from free_bench.cli.registry import COMMANDS
from free_bench.core.errors import FreeBenchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="free-bench",
        description="Early-exit vision-language models (FREE and baselines), measured on the clock.",
    )
    parser.add_argument("--version", action="version", version=f"free-bench {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    noise.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not the stream at set-up), so a
    `main()` called in-process by a caller that swaps stderr never writes to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(args: argparse.Namespace) -> None:
    """Library code logs through `logging`; the CLI shows INFO and above on stderr (-v: DEBUG, -q:
    WARNING); progress bars stay on tqdm."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[_StderrHandler()], force=True)
    for noisy in ("urllib3", "filelock", "datasets", "fsspec", "PIL", "matplotlib", "torch", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def load_commands() -> None:
    """Import every subcommand's module, which registers it; none of them imports torch at import."""
    from free_bench.cli import (  # noqa: F401
        attack,
        calibrate,
        data,
        eval_exits,
        export_backbone,
        pretrain,
        regress,
        reproduce,
        score,
        sweep,
        train_exits,
    )


def main(argv: list[str] | None = None) -> int:
    load_commands()
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return COMMANDS[args.command][1](args)
    except FreeBenchError as e:
        print(f"free-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130
