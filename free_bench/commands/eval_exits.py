"""`free-bench eval-exits`: every exit's teacher-forced VQA answers on val/test, as tidy parquet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from free_bench.cli import command
from free_bench.errors import FreeBenchError


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exits", type=Path, required=True, help="a folder written by train-exits")
    p.add_argument(
        "--split", nargs="+", default=["val", "test"], help="splits to evaluate (default: val test)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for per_exit_<split>.parquet")
    p.add_argument(
        "--tasks", nargs="+", default=["vqa", "caption"], help="vqa and/or caption (default: both)"
    )
    p.add_argument(
        "--max-rows", type=int, default=None, help="first N rows (or images) per split (default: all)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from free_bench.backbone.embedded import parse_spec
    from free_bench.config import get_profile
    from free_bench.data.scenes_dataset import load_scenes
    from free_bench.methods import load_exits
    from free_bench.records import write_parquet
    from free_bench.training.evaluate import (
        accuracy_table,
        caption_score_table,
        per_exit_captions,
        per_exit_vqa,
    )

    config_file = args.exits / "config.json"
    if not config_file.exists():
        raise FreeBenchError(f"{args.exits} holds no trained exits (no config.json); run train-exits first")
    saved = json.loads(config_file.read_text())
    spec = saved["backbone"]["spec"]
    if not str(spec).startswith("embedded:"):
        raise FreeBenchError(f"exits on {spec}: per-exit evaluation on scenes needs an embedded backbone")
    profile = get_profile(parse_spec(spec)[0])
    ds = load_scenes(profile.name, profile.seed)
    bad_tasks = [t for t in args.tasks if t not in ("vqa", "caption")]
    if bad_tasks:
        raise FreeBenchError(f"unknown task(s) {bad_tasks}; valid: vqa, caption")
    bad = [s for s in args.split if s not in ds]
    if bad:
        raise FreeBenchError(f"unknown split(s) {bad}; valid: {', '.join(ds)}")
    method = load_exits(args.exits, device=args.device, pretrain_if_missing=False)
    regime = json.loads((args.exits / "manifest.json").read_text())["config"]["regime"]
    tag = {"method": method.name, "regime": regime}
    for split in args.split:
        if "vqa" in args.tasks:
            df = per_exit_vqa(method, ds[split], args.max_rows)
            write_parquet(df.assign(split=split, **tag), args.out / f"per_exit_{split}.parquet")
            print(f"{method.name} ({regime}) on {split}: VQA accuracy per exit layer")
            print(accuracy_table(df).to_string())
        if "caption" in args.tasks:
            caps = per_exit_captions(method, ds[split], args.max_rows)
            write_parquet(caps.assign(split=split, **tag), args.out / f"per_exit_captions_{split}.parquet")
            scores = caption_score_table(caps).assign(split=split, **tag)
            write_parquet(scores, args.out / f"per_exit_caption_scores_{split}.parquet")
            print(f"{method.name} ({regime}) on {split}: caption scores per exit layer (teacher-forced)")
            print(scores.pivot_table(index="metric", columns="layer", values="value").round(3).to_string())
    print(f"wrote {args.out}")
    return 0


command(
    "eval-exits",
    "Teacher-forced VQA accuracy of every trained exit (no skipping), per layer and question type.",
    "free-bench eval-exits --exits runs/free-semi --split val test --out runs/free-semi/eval",
    _add_args,
    run,
)
