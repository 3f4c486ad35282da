"""`free-bench pretrain`: train the embedded BLIP-2 of a profile (resumable) and report its quality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from free_bench.cli import command
from free_bench.config import PROFILES


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)}")
    p.add_argument("--lm", default="opt", choices=["opt", "t5"], help="language model type (default: opt)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the cache folder that load_backbone('embedded:P') reads)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--frozen-lm",
        action="store_true",
        help="keep the LM frozen in stage 2, as BLIP-2 did (default: the profile's setting)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the quality report")


def run(args: argparse.Namespace) -> int:
    from free_bench.backbone.embedded import parse_spec
    from free_bench.backbone.hf import resolve_device
    from free_bench.backbone.load import embedded_dir
    from free_bench.backbone.pretrain_run import pretrain

    spec = f"embedded:{args.profile}{'-t5' if args.lm == 't5' else ''}"
    profile, lm = parse_spec(spec)
    device = str(resolve_device(args.device))
    out = args.out or embedded_dir(spec, args.seed)
    if (out / "manifest.json").exists():
        print(f"{spec} is already pretrained in {out} (delete it to retrain)")
        return 0
    overrides = {"stage2_train_lm": False} if args.frozen_lm else None
    summary = pretrain(
        profile, lm, out, seed=args.seed, device=device, overrides=overrides, evaluate=not args.no_eval
    )
    quality = {k: v for k, v in summary.get("quality", {}).items() if k != "caption_predictions"}
    print(json.dumps({"train_seconds": summary["train_seconds"], **quality}, indent=2))
    print(f"wrote {out}")
    return 0


command(
    "pretrain",
    "Pretrain the embedded BLIP-2 of a profile on scenes (two stages, checkpointed, resumable).",
    "free-bench pretrain --profile cpu --out cache/backbones/embedded-cpu-seed0",
    _add_args,
    run,
)
