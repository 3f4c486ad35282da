"""`free-bench attack`: a slowdown attack on trained exits (DeepSloth-style), clean against attacked."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from free_bench.cli.registry import add_data, add_device, at_least, command


def unit_fraction(text: str) -> float:
    """A number in (0, 1], written as a fraction (8/255) or a decimal (0.03), checked at parse time."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} = {value:g} is outside (0, 1]: pixels are in [0, 1] units")
    return value


unit_fraction.__name__ = "number in (0, 1]"


def _add_args(p: argparse.ArgumentParser) -> None:
    from free_bench.config import SWEEP_METHODS, SWEEP_SPLITS

    p.add_argument("--method", required=True, choices=SWEEP_METHODS,
                   help="the exits' method (static has no confidence to attack and is refused)")  # fmt: skip
    p.add_argument("--exits", type=Path, required=True, help="a folder written by train-exits")
    p.add_argument("--split", default="test", choices=SWEEP_SPLITS, help="VQA rows to attack (default test)")
    p.add_argument("--max-rows", type=at_least(1), default=None, help="first N rows of the split (default: all)")
    p.add_argument("--eps", type=unit_fraction, default=8 / 255,
                   help="L-inf budget on [0, 1] pixels, e.g. 8/255 (default) or 0.03")  # fmt: skip
    p.add_argument("--steps", type=at_least(1), default=10, help="signed-gradient steps (default 10)")
    p.add_argument("--step-size", type=unit_fraction, default=None,
                   help="per step, in [0, 1] pixel units (default 2.5 * eps / steps)")  # fmt: skip
    p.add_argument("--threshold", type=float, default=None,
                   help="the rule's threshold for decoding (default: the middle of its sweep grid: "
                        "0.5 max-prob or cosine, 2.5 nats entropy, the middle patience)")  # fmt: skip
    p.add_argument("--seed", type=at_least(0), default=0, help="seed of the random start (default 0)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="rows attacked and decoded together (default 8)")
    p.add_argument("--out", type=Path, required=True, help="folder for attack.parquet and attack_samples.parquet")
    add_data(p, "the data the exits were trained beside")
    add_device(p)
    p.add_argument("--overwrite", action="store_true", help="replace an attack run already in --out (default: refuse)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from free_bench.evaluation.attack import attack_run

    out = attack_run(args.exits, args.out, method=args.method, split=args.split, max_rows=args.max_rows,
                     eps=args.eps, steps=args.steps, step_size=args.step_size, threshold=args.threshold,
                     seed=args.seed, batch_size=args.batch_size, data=args.data, device=args.device,
                     overwrite=args.overwrite)  # fmt: skip
    table = pd.read_parquet(out / "attack.parquet")
    cols = ["condition", "accuracy", "full_accuracy", "mean_exit_layer", "expected_speedup", "measured_speedup",
            "speedup_taken", "linf_max"]  # fmt: skip
    print(table[cols].round(4).to_string(index=False))
    print(f"wrote {out / 'attack.parquet'}")
    return 0


command(
    "attack",
    "Slowdown attack on trained exits: image perturbations that push tokens deeper, and the speedup they take.",
    "free-bench attack --method free --exits runs/free-semi --split test --max-rows 64 --eps 8/255 "
    "--out runs/free-semi/attack",
    _add_args,
    run,
)
