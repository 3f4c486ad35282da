"""The subcommand registry and the argument types the subcommands share.

Each subcommand module calls `command(...)` at import; `app.main` imports them all. Argument types
check values at parse time, before torch is imported, so a typo costs well under a second.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

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


# --- argument types shared by the subcommands ----------------------------------------------------
def device(text: str) -> str:
    """cpu, cuda or cuda:N: the devices the suite runs on (checked here, not after torch loads)."""
    if text in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"invalid device {text!r}; valid: cpu, cuda, cuda:N")


def at_least(low: int) -> Callable[[str], int]:
    """An integer type that refuses values below `low` at parse time."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, type=device, help="cpu, cuda or cuda:N (default: cuda if available)")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run in --out that was made with other settings (default: refuse)")  # fmt: skip


def vqa_prompt(text: str) -> str:
    """A VQA prompt template: one `{}` where the question goes (LAVIS's `prompt.format(question)`)."""
    if text.count("{}") != 1 or text.replace("{}", "").count("{") or text.replace("{}", "").count("}"):
        raise argparse.ArgumentTypeError(
            f"{text!r} must hold exactly one '{{}}' where the question goes, e.g. 'Question: {{}} Answer:'"
        )
    return text


def add_data(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--data", type=Path, default=None,
                   help=f"a folder written by `free-bench data` (default: {default})")  # fmt: skip


def add_prompts(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--prompt", type=vqa_prompt, default=None,
                   help=f"VQA prompt with {{}} for the question (default: {default})")  # fmt: skip
    p.add_argument("--caption-prompt", default=None, help=f"the text a caption continues (default: {default})")


def prompts(args: argparse.Namespace) -> dict[str, str] | None:
    given = {"vqa": args.prompt, "caption": args.caption_prompt}
    return {k: v for k, v in given.items() if v is not None} or None
