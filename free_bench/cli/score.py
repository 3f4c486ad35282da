"""`free-bench score-captions`: score caption predictions written where pycocoevalcap cannot run.

The GPU machine lacks pycocoevalcap (and Java), so a GPU run saves its predictions; this command
scores them on a CPU box: a pretrain `quality.json` (references regenerated from the deterministic
`scenes` generator), or an `eval-exits` `per_exit_captions_<split>.parquet` (references inside).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from free_bench.cli.registry import command
from free_bench.core.errors import FreeBenchError


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "predictions",
        type=Path,
        help="a quality.json with 'caption_predictions' (pretrain), a per_exit_captions_<split>.parquet, "
        "or a caption sweep's folder (its captions.parquet; fills the CIDEr of its tables in place)",
    )
    p.add_argument("--profile", default=None, help="the scenes profile (needed for a quality.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--meteor", action="store_true", help="per-exit parquet: also METEOR (a Java run per layer)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the scores here (default: print only; for a per-exit parquet, "
        "per_exit_caption_scores_<split>.parquet beside it)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.predictions.exists():
        raise FreeBenchError(f"{args.predictions} does not exist")
    if args.predictions.is_dir():
        return _sweep(args)
    if args.predictions.suffix == ".parquet":
        return _per_exit(args)
    return _quality(args)


def _sweep(args: argparse.Namespace) -> int:
    from free_bench.evaluation.sweep_captions import rescore

    scores = rescore(args.predictions)
    print(scores.round(4).to_string(index=False))
    print(f"filled the CIDEr of {args.predictions / 'sweep.parquet'} and samples.parquet")
    return 0


def _per_exit(args: argparse.Namespace) -> int:
    import pandas as pd

    from free_bench.core.records import write_parquet
    from free_bench.evaluation.per_exit import caption_score_table

    name = args.predictions.name
    if not name.startswith("per_exit_captions_"):
        raise FreeBenchError(
            f"{args.predictions}: expected a per_exit_captions_<split>.parquet from eval-exits"
        )
    caps = pd.read_parquet(args.predictions)
    need = {"image_id", "layer", "exit_kind", "prediction", "references"}
    if need - set(caps.columns):
        raise FreeBenchError(f"{args.predictions} lacks columns {sorted(need - set(caps.columns))}")
    tags = {c: caps[c].iloc[0] for c in ("split", "method", "regime") if c in caps.columns}
    scores = caption_score_table(caps, meteor=args.meteor).assign(**tags)
    if scores["value"].isna().all():
        raise FreeBenchError(f"cannot score captions here: {scores['missing'].iloc[0]}")
    out = args.out or args.predictions.with_name(
        name.replace("per_exit_captions_", "per_exit_caption_scores_")
    )
    write_parquet(scores, out)
    print(scores.pivot_table(index="metric", columns="layer", values="value").round(3).to_string())
    print(f"wrote {out}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from free_bench.config import get_profile
    from free_bench.core.records import write_json
    from free_bench.data.scenes_dataset import generate_split
    from free_bench.evaluation.metrics import caption_scores

    if args.profile is None:
        raise FreeBenchError("--profile is needed to regenerate the references of a quality.json")
    try:
        preds = json.loads(args.predictions.read_text())["caption_predictions"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise FreeBenchError(f"{args.predictions}: cannot read caption_predictions ({e})") from None
    rows = generate_split(get_profile(args.profile).scenes, args.split, args.seed, progress=False)
    refs = {r["image_id"]: r["captions"] for r in rows}
    unknown = sorted(set(preds) - set(refs))
    if unknown:
        raise FreeBenchError(
            f"{len(unknown)} predicted ids are not in scenes/{args.profile}/{args.split}: {unknown[:5]}"
        )
    scores = caption_scores(preds, {k: refs[k] for k in preds})
    result = {"profile": args.profile, "split": args.split, "images": len(preds), "scores": scores}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(result, args.out)
    return 0


command(
    "score-captions",
    "Score caption predictions saved by a GPU run (pycocoevalcap + Java, on a CPU machine).",
    "free-bench score-captions results/gpu/backbone/quality.json --profile gpu --out scores.json\n"
    "  free-bench score-captions runs/free-semi/eval/per_exit_captions_test.parquet\n"
    "  free-bench score-captions results/gpu/sweeps/sim-free-semi-s0-test-caption",
    _add_args,
    run,
)
