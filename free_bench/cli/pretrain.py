"""`free-bench pretrain`: train the embedded BLIP-2 of a profile (resumable) and report its quality."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from free_bench.cli.registry import add_device, add_overwrite, command
from free_bench.config import PROFILES

log = logging.getLogger(__name__)


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
    from free_bench.core.errors import FreeBenchError
    from free_bench.core.records import read_json
    from free_bench.core.runs import check_same, check_writable, remove_run, writer_lock
    from free_bench.models.embedded import parse_spec
    from free_bench.models.embedded_cache import embedded_dir, recipe
    from free_bench.models.hf import resolve_device
    from free_bench.pipeline.backbone import pretrain

    spec = f"embedded:{args.profile}{'-t5' if args.lm == 't5' else ''}"
    profile, lm = parse_spec(spec)
    out = args.out or embedded_dir(spec, args.seed)
    check_writable(out)
    overrides = {"stage2_train_lm": False} if args.frozen_lm else None
    wanted = {"config": recipe(profile, lm, overrides), "seeds": [args.seed]}
    with writer_lock(out):
        if (out / "manifest.json").is_file():
            made = read_json(out / "manifest.json")
            if not args.overwrite:
                check_same("a pretrained backbone", out, {k: made.get(k) for k in wanted}, wanted)
                log.info("%s is already pretrained in %s with these settings: reused", spec, out)
                return 0
            remove_run(out, "manifest.json")
        elif out.exists() and any(f.name != "_pretrain_state" for f in out.iterdir()):
            raise FreeBenchError(f"{out} exists and holds no pretrained backbone; choose another --out")
        device = str(resolve_device(args.device))
        summary = pretrain(profile, lm, out, seed=args.seed, device=device, overrides=overrides,
                           evaluate=not args.no_eval)  # fmt: skip
    quality = {k: v for k, v in summary.get("quality", {}).items() if k != "caption_predictions"}
    print(json.dumps({"train_seconds": summary["train_seconds"], **quality}, indent=2))
    log.info("wrote %s", out)
    return 0


command(
    "pretrain",
    "Pretrain the embedded BLIP-2 of a profile on scenes (two stages, checkpointed, resumable).",
    "free-bench pretrain --profile cpu",
    _add_args,
    run,
)
