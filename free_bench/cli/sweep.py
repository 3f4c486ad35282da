"""`free-bench sweep`: quality and speedup of one exit method over thresholds, point by point."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import add_data, add_device, add_overwrite, add_prompts, at_least, command


def perturbation(text: str) -> str:
    """NAME:SEVERITY with a known perturbation and a severity in 1..5, checked at parse time."""
    from free_bench.config import PERTURBATIONS, SEVERITIES

    name, _, severity = text.partition(":")
    if name not in PERTURBATIONS:
        raise argparse.ArgumentTypeError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}")
    if severity not in {str(s) for s in SEVERITIES}:
        raise argparse.ArgumentTypeError(
            f"{text!r}: severity must be one of {', '.join(map(str, SEVERITIES))} (NAME:SEVERITY)"
        )
    return text


def _add_args(p: argparse.ArgumentParser) -> None:
    from free_bench.config import DECODES, ENGINES, KV_POLICIES, MODES, SWEEP_METHODS, SWEEP_SPLITS, TASKS

    p.add_argument("--method", required=True, choices=SWEEP_METHODS, help="the exit method")
    p.add_argument(
        "--exits", type=Path, required=True, help="trained exits (train-exits --out); names the backbone"
    )
    p.add_argument("--split", required=True, choices=SWEEP_SPLITS, help="the split to decode")
    p.add_argument("--mode", required=True, choices=MODES,
                   help="simulated (one teacher-forced pass) or live (timed decoding)")  # fmt: skip
    p.add_argument("--thresholds", type=float, nargs="+", required=True, help="the rule's parameters")
    p.add_argument("--kv-policy", default="propagate", choices=KV_POLICIES, help="(default propagate)")
    p.add_argument("--batch-size", type=at_least(1), default=1, help="rows decoded together (default 1)")
    p.add_argument("--perturb", default=None, type=perturbation, help="NAME:SEVERITY, e.g. gaussian_noise:3")
    p.add_argument("--tasks", nargs="+", default=["vqa"], choices=TASKS, help="vqa and/or caption (default vqa)")
    p.add_argument("--max-rows", type=at_least(1), default=None, help="first N rows (captions: images)")
    p.add_argument("--warmup", type=at_least(0), default=3, help="live: untimed batches first (default 3)")
    p.add_argument("--repeats", type=at_least(1), default=1, help="live: timed repeats per batch, median kept")
    p.add_argument("--engine", default="eager", choices=ENGINES,
                   help="live: eager (Python layer loop) or graphs (CUDA graphs per segment and bucket of rows; OPT, CUDA)")  # fmt: skip
    p.add_argument("--no-compact", action="store_true", help="live: exited rows ride along (no compaction)")
    p.add_argument("--decode", default="greedy", choices=DECODES,
                   help="live: greedy early exits (default), or speculative: the exits draft, one full pass "
                        "verifies (lossless; batch 1, propagate)")
    p.add_argument("--draft-len", type=at_least(1), default=4, help="speculative: most tokens a draft holds (default 4)")
    p.add_argument("--no-hf-baseline", action="store_true",
                   help="live: do not time HF generate() beside the engine's full model (its times are NaN)")  # fmt: skip
    p.add_argument(
        "--exits-at", default=None, help="consult only these trained exits, e.g. 4,8,12 (default all)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for points/ and sweep.parquet")
    add_data(p, "the data the exits were trained beside")
    p.add_argument("--backbone", default=None,
                   help="embedded:<profile>, an HF id or a BLIP-2 folder (default: the one the exits name; "
                        "another must be the same weights)")  # fmt: skip
    add_prompts(p, "the one the exits were trained with")
    p.add_argument("--scorer", default="lavis", choices=("lavis", "vqa-head"),
                   help="VQA accuracy rule: LAVIS's (BLIP-2's and FREE's numbers) or GT-Vision-Lab HEAD (default lavis)")  # fmt: skip
    add_device(p)
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    from free_bench.evaluation.sweep import SweepSpec
    from free_bench.evaluation.sweep_ranks import run_sweep_ranks

    spec = SweepSpec(
        method=args.method, exits=str(args.exits), split=args.split, mode=args.mode,
        thresholds=tuple(args.thresholds), kv_policy=args.kv_policy, batch_size=args.batch_size,
        perturb=args.perturb, tasks=tuple(args.tasks), max_rows=args.max_rows, warmup=args.warmup,
        repeats=args.repeats, exits_at=args.exits_at, compact=not args.no_compact, engine=args.engine,
        data=None if args.data is None else str(args.data.resolve()), backbone=args.backbone,
        prompt=args.prompt, caption_prompt=args.caption_prompt, scorer=args.scorer,
        hf_baseline=not args.no_hf_baseline, decode=args.decode, draft_len=args.draft_len,
    )  # fmt: skip
    df = run_sweep_ranks(spec, args.out, device=args.device, overwrite=args.overwrite)
    if df is None:  # a torchrun rank other than 0: rank 0 gathers and prints
        return 0
    cols = ["method", "threshold", "task", "metric", "value", "expected_speedup", "measured_speedup",
            "mean_exit_layer", "latency_ms_median"]  # fmt: skip
    if args.decode == "speculative":
        cols += ["acceptance_rate", "tokens_per_pass"]
    print(df[cols].sort_values(["task", "method", "threshold"]).round(4).to_string(index=False))
    print(f"wrote {args.out / 'sweep.parquet'}")
    return 0


command(
    "sweep",
    "Sweep an exit rule's threshold: quality, expected and measured speedup per point (resumable).",
    "free-bench sweep --method free --exits runs/free-semi --split val --mode live "
    "--thresholds 0.5 0.7 0.9 --out runs/free-semi/sweep",
    _add_args,
    run,
)
