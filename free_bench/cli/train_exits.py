"""`free-bench train-exits`: train one exit method on a frozen backbone; save exits + manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import (
    add_data,
    add_device,
    add_overwrite,
    add_prompts,
    at_least,
    command,
    prompts,
)


def _add_args(p: argparse.ArgumentParser) -> None:
    from free_bench.config import METHODS, PROFILES, REGIMES, TASKS

    p.add_argument("--method", required=True, choices=METHODS, help="the exit method")
    p.add_argument("--backbone", required=True, help="embedded:<profile>, an HF id or a local BLIP-2 folder")
    p.add_argument("--regime", required=True, choices=REGIMES,
                   help="semi (labelled exit_train) or unsupervised (no labels)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for the exits, config.json and manifest")
    p.add_argument("--exits", default=None, help="placement: '4,8,12', 'every:k' or 'all' (default: dense)")
    add_data(p, "the embedded backbone's scenes")
    p.add_argument("--profile", default=None, choices=list(PROFILES),
                   help="the profile whose scenes (without --data) and training settings to use "
                        "(default: an embedded backbone's own; other backbones: the defaults)")  # fmt: skip
    p.add_argument("--split", default=None, help="training split (default: exit_train / unlabeled)")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="rows a step (default: the profile's)")
    add_prompts(p, "the backbone's: LAVIS's for its LM, an embedded one's own")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                   help="vqa and/or caption (default: both)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the profile's)")
    p.add_argument("--patience", type=int, default=None, help="PABEE patience (>= 1)")
    p.add_argument("--temperature", type=float, default=None, help="distillation temperature (> 0)")
    p.add_argument("--w-adv", type=float, default=None, help="FREE: weight of the adversarial term")
    p.add_argument("--seed", type=int, default=0, help="seed of the exits' initialisation and data order")
    p.add_argument(
        "--backbone-seed", type=int, default=0, help="which pretraining of an embedded backbone (default 0)"
    )
    add_device(p)
    add_overwrite(p)


def _options(args: argparse.Namespace) -> dict:
    opts = {"patience": args.patience, "temperature": args.temperature, "w_adv": args.w_adv}
    return {k: v for k, v in opts.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from free_bench.training.run import train_exit_run

    train_exit_run(args.out, method=args.method, backbone=args.backbone, regime=args.regime, exits=args.exits,
                   profile=args.profile, split=args.split, tasks=tuple(args.tasks), steps=args.steps,
                   options=_options(args), seed=args.seed, backbone_seed=args.backbone_seed,
                   device=args.device, overwrite=args.overwrite, data=args.data, prompts=prompts(args),
                   batch_size=args.batch_size)  # fmt: skip
    return 0


command(
    "train-exits",
    "Train an exit method's exits on a frozen backbone (checkpointed, resumable).",
    "free-bench train-exits --method free --backbone embedded:cpu --regime semi --out runs/free-semi",
    _add_args,
    run,
)
