"""`free-bench reproduce`: every stage end to end into results/<profile>/ (see `pipeline.reproduce`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from free_bench.cli.registry import command
from free_bench.config import PROFILES

log = logging.getLogger(__name__)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, choices=list(PROFILES),
                   help="smoke | cpu | gpu (default: gpu with CUDA, else cpu)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results/)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing them")
    p.add_argument("--backbone", default=None,
                   help="embedded:<profile> (default: the profile's), an HF id or a BLIP-2 folder (needs --data)")  # fmt: skip
    p.add_argument("--data", type=Path, default=None,
                   help="a `free-bench data` folder with exit_train, val and test splits (default: the profile's scenes)")  # fmt: skip
    p.add_argument("--config", type=Path, default=None,
                   help="YAML or TOML: a profile with changed exit and reproduce settings (pipeline.settings); "
                        "its `name` names results/<name>/")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from free_bench.pipeline.reproduce import clear, context, default_profile, reproduce

    ctx = context(args.profile or default_profile(), args.seed, args.results, backbone=args.backbone,
                  data=args.data, config=args.config)  # fmt: skip
    if args.fresh:
        clear(ctx)
    out = reproduce(ctx)
    log.info("results in %s", out)
    return 0


command(
    "reproduce",
    "Run every stage end to end into results/<profile>/ (finished stages are reused).",
    "free-bench reproduce --profile smoke",
    _add_args,
    run,
)
