"""`free-bench eval-exits`: every exit's teacher-forced VQA answers on val/test, as tidy parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import add_data, add_device, add_prompts, at_least, command, prompts


def _add_args(p: argparse.ArgumentParser) -> None:
    from free_bench.config import SWEEP_SPLITS, TASKS

    p.add_argument("--exits", type=Path, required=True, help="a folder written by train-exits")
    p.add_argument("--split", nargs="+", default=["val", "test"], choices=SWEEP_SPLITS,
                   help="splits to evaluate (default: val test)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for per_exit_<split>.parquet")
    p.add_argument("--tasks", nargs="+", default=["vqa", "caption"], choices=TASKS,
                   help="vqa and/or caption (default: both)")  # fmt: skip
    p.add_argument("--max-rows", type=at_least(1), default=None,
                   help="first N rows (or images) per split (default: all)")  # fmt: skip
    add_data(p, "the data the exits were trained beside")
    p.add_argument("--backbone", default=None,
                   help="embedded:<profile>, an HF id or a BLIP-2 folder (default: the one the exits name)")  # fmt: skip
    add_prompts(p, "the one the exits were trained with")
    p.add_argument("--scorer", default="lavis", choices=("lavis", "vqa-head"),
                   help="VQA accuracy rule (default lavis: LAVIS's, which BLIP-2's and FREE's numbers use)")  # fmt: skip
    add_device(p)


def run(args: argparse.Namespace) -> int:
    from free_bench.evaluation.per_exit import evaluate_exit_run

    evaluate_exit_run(args.exits, args.out, splits=tuple(args.split), tasks=tuple(args.tasks),
                      max_rows=args.max_rows, device=args.device, data=args.data, backbone=args.backbone,
                      prompts=prompts(args), scorer=args.scorer)  # fmt: skip
    return 0


command(
    "eval-exits",
    "Teacher-forced VQA accuracy of every trained exit (no skipping), per layer and question type.",
    "free-bench eval-exits --exits runs/free-semi --split val test --out runs/free-semi/eval",
    _add_args,
    run,
)
