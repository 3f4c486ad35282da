"""`free-bench sweep`: quality and speedup of one exit method over thresholds, point by point."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli import command


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="exit method (free, deebert, pabee, distill, static, mue)")
    p.add_argument(
        "--exits", type=Path, required=True, help="trained exits (train-exits --out); names the backbone"
    )
    p.add_argument("--split", required=True, help="val, test or test_novel")
    p.add_argument(
        "--mode", required=True, help="simulated (one teacher-forced pass) or live (timed decoding)"
    )
    p.add_argument("--thresholds", type=float, nargs="+", required=True, help="the rule's parameters")
    p.add_argument("--kv-policy", default="propagate", help="propagate, deferred or full (default propagate)")
    p.add_argument("--batch-size", type=int, default=1, help="rows decoded together (default 1)")
    p.add_argument("--perturb", default=None, help="NAME:SEVERITY, e.g. gaussian_noise:3")
    p.add_argument("--tasks", nargs="+", default=["vqa"], help="vqa and/or caption (default vqa)")
    p.add_argument("--max-rows", type=int, default=None, help="first N rows (captions: images)")
    p.add_argument("--warmup", type=int, default=3, help="live: untimed batches first (default 3)")
    p.add_argument("--repeats", type=int, default=1, help="live: timed repeats per batch, median kept")
    p.add_argument(
        "--engine", default="eager",
        help="live: eager (Python layer loop) or graphs (CUDA graphs per segment; batch 1, OPT, CUDA)",
    )  # fmt: skip
    p.add_argument("--no-compact", action="store_true", help="live: exited rows ride along (no compaction)")
    p.add_argument(
        "--exits-at", default=None, help="consult only these trained exits, e.g. 4,8,12 (default all)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for points/ and sweep.parquet")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from free_bench.engine.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        method=args.method, exits=str(args.exits), split=args.split, mode=args.mode,
        thresholds=tuple(args.thresholds), kv_policy=args.kv_policy, batch_size=args.batch_size,
        perturb=args.perturb, tasks=tuple(args.tasks), max_rows=args.max_rows, warmup=args.warmup,
        repeats=args.repeats, exits_at=args.exits_at, compact=not args.no_compact, engine=args.engine,
    )  # fmt: skip
    df = run_sweep(spec, args.out, device=args.device)
    cols = ["method", "threshold", "task", "metric", "value", "expected_speedup", "measured_speedup",
            "mean_exit_layer", "latency_ms_median"]  # fmt: skip
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
