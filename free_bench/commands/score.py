"""`free-bench score-captions`: score caption predictions written where pycocoevalcap cannot run.

The GPU machine lacks pycocoevalcap (and Java), so a GPU run saves its predictions; this command
regenerates the references from the deterministic `scenes` generator and scores them on a CPU box.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from free_bench.cli import command
from free_bench.errors import FreeBenchError
from free_bench.records import write_json


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("quality", type=Path, help="a quality.json with 'caption_predictions' (from pretrain)")
    p.add_argument("--profile", required=True, help="the scenes profile the predictions were made on")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the scores here (default: print only)")


def run(args: argparse.Namespace) -> int:
    from free_bench.config import get_profile
    from free_bench.data.scenes_dataset import generate_split
    from free_bench.metrics import caption_scores

    try:
        preds = json.loads(args.quality.read_text())["caption_predictions"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise FreeBenchError(f"{args.quality}: cannot read caption_predictions ({e})") from None
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
    "free-bench score-captions results/gpu/backbone/quality.json --profile gpu --out scores.json",
    _add_args,
    run,
)
