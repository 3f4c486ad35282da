"""`free-bench pretrain`: train the embedded BLIP-2 of a profile (resumable) and report its quality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from free_bench.cli.registry import add_device, add_overwrite, command
from free_bench.config import PROFILES


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, choices=list(PROFILES), help="the profile to pretrain")
    p.add_argument("--lm", default="opt", choices=["opt", "t5"], help="language model type (default: opt)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the cache folder that load_backbone('embedded:P') reads)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    p.add_argument(
        "--frozen-lm",
        action="store_true",
        help="keep the LM frozen in stage 2, as BLIP-2 did (default: the profile's setting)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the quality report")
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    from free_bench.models.embedded_cache import embedded_dir
    from free_bench.models.hf import resolve_device
    from free_bench.pipeline.backbone import pretrain_into

    spec = f"embedded:{args.profile}{'-t5' if args.lm == 't5' else ''}"
    out = args.out or embedded_dir(spec, args.seed)
    overrides = {"stage2_train_lm": False} if args.frozen_lm else None
    summary = pretrain_into(out, args.profile, args.lm, seed=args.seed, device=str(resolve_device(args.device)),
                            overrides=overrides, evaluate=not args.no_eval, overwrite=args.overwrite)  # fmt: skip
    if summary is not None:
        quality = {k: v for k, v in summary.get("quality", {}).items() if k != "caption_predictions"}
        print(json.dumps({"train_seconds": summary["train_seconds"], **quality}, indent=2))
    return 0


command(
    "pretrain",
    "Pretrain the embedded BLIP-2 of a profile on scenes (two stages, checkpointed, resumable).",
    "free-bench pretrain --profile cpu",
    _add_args,
    run,
)
