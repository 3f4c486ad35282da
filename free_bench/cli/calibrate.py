"""`free-bench calibrate`: a threshold certified by Learn-then-Test, and where the guarantee breaks."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import add_data, add_device, add_overwrite, at_least, command


def fraction(text: str) -> float:
    """A number strictly between 0 and 1, checked at parse time."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value}")
    return value


def _add_args(p: argparse.ArgumentParser) -> None:
    from free_bench.config import SWEEP_SPLITS

    p.add_argument("--method", required=True, help="the exits' method (checked against --exits)")
    p.add_argument("--exits", type=Path, required=True, help="a folder written by train-exits")
    add_data(p, "the data the exits were trained beside")
    p.add_argument("--split", default="val", choices=SWEEP_SPLITS, help="the calibration split (default: val)")
    p.add_argument("--epsilon", type=fraction, required=True, help="the risk level to certify, e.g. 0.05")
    p.add_argument("--delta", type=fraction, required=True,
                   help="the allowed failure probability of the certificate, e.g. 0.1")  # fmt: skip
    p.add_argument("--risk", default="consistency", choices=("consistency", "accuracy"),
                   help="consistency: the answer differs from the full model's (no labels); accuracy: the "
                        "drop of VQA accuracy against the full model on the same sample (default: consistency)")  # fmt: skip
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="candidates, in any order (default: the rule's 11-point grid); tested safest first")  # fmt: skip
    p.add_argument("--max-rows", type=at_least(1), default=None, help="first N questions per split (default: all)")
    p.add_argument("--test-split", default=None, choices=SWEEP_SPLITS,
                   help="also evaluate the certified threshold there (e.g. test)")  # fmt: skip
    p.add_argument("--test-rows", type=at_least(1), default=None,
                   help="first N questions of --test-split (default: --max-rows)")  # fmt: skip
    p.add_argument("--perturb", nargs="*", default=[], metavar="NAME:SEVERITY",
                   help="with --test-split: the shifts to evaluate it under too, e.g. gaussian_noise:3 typo:1")  # fmt: skip
    p.add_argument("--scorer", default="lavis", choices=("lavis", "vqa-head"), help="VQA accuracy rule")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    p.add_argument("--out", type=Path, required=True, help="folder for the certificate and its tables")
    add_overwrite(p)
    add_device(p)


def run(args: argparse.Namespace) -> int:
    from free_bench.calibration.run import calibrate_run
    from free_bench.core.errors import FreeBenchError

    if args.perturb and not args.test_split:
        raise FreeBenchError("--perturb needs --test-split: the split the shifts are applied to")
    calibrate_run(args.exits, args.out, method=args.method, split=args.split, epsilon=args.epsilon,
                  delta=args.delta, risk=args.risk, thresholds=args.thresholds, data=args.data,
                  max_rows=args.max_rows, test_split=args.test_split, test_rows=args.test_rows, perturbations=tuple(args.perturb),
                  scorer=args.scorer, batch_size=args.batch_size, device=args.device,
                  overwrite=args.overwrite)  # fmt: skip
    return 0


command(
    "calibrate",
    "Certify a threshold by Learn-then-Test: risk <= epsilon with probability >= 1 - delta.",
    "free-bench calibrate --method free --exits runs/free-semi --split val --epsilon 0.05 --delta 0.1 "
    "--out runs/free-semi/calibrated",
    _add_args,
    run,
)
