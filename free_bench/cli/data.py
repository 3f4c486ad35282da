"""`free-bench data`: materialise a dataset (scenes or real files) and print its counts."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import add_overwrite, command
from free_bench.config import DATASETS, PROFILES, SPLITS


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="scenes", choices=DATASETS, help="(default: scenes)")
    p.add_argument("--profile", default="smoke", choices=list(PROFILES), help="scenes size (default: smoke)")
    p.add_argument("--seed", type=int, default=0, help="scenes generator seed (default: 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder (datasets.save_to_disk layout)")
    p.add_argument(
        "--annotations", type=Path, help="coco-karpathy: dataset_coco.json; vqav2: annotations JSON"
    )
    p.add_argument("--questions", type=Path, help="vqav2: the questions JSON")
    p.add_argument("--images", type=Path, help="real data: the image folder")
    p.add_argument("--splits", nargs="+", default=None, choices=SPLITS,
                   help="real data: splits to load (default: val test)")  # fmt: skip
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    from free_bench.data.folder import dataset_config, write_dataset
    from free_bench.data.scenes_dataset import count_table

    config = dataset_config(args.dataset, profile=args.profile, seed=args.seed, annotations=args.annotations,
                            questions=args.questions, images=args.images, splits=args.splits)  # fmt: skip
    ds = write_dataset(args.out, config, overwrite=args.overwrite)
    if ds is not None:
        print(count_table(ds).to_string())
    return 0


command(
    "data",
    "Write a dataset to disk and print its counts per split and question type.",
    "free-bench data --dataset scenes --profile smoke --out data/scenes-smoke",
    _add_args,
    run,
)
