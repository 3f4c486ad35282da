"""`free-bench data`: materialise a dataset (scenes or real files) and print its counts."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import datasets
import pandas as pd

from free_bench.cli import command
from free_bench.config import PROFILES
from free_bench.data import DATASETS
from free_bench.data.schema import SPLITS
from free_bench.errors import FreeBenchError, check_choice
from free_bench.records import Manifest


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="scenes", help=f"one of {', '.join(DATASETS)} (default: scenes)")
    p.add_argument("--profile", default="smoke", help=f"scenes size: {', '.join(PROFILES)} (default: smoke)")
    p.add_argument("--seed", type=int, default=0, help="scenes generator seed (default: 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder (datasets.save_to_disk layout)")
    p.add_argument(
        "--annotations", type=Path, help="coco-karpathy: dataset_coco.json; vqav2: annotations JSON"
    )
    p.add_argument("--questions", type=Path, help="vqav2: the questions JSON")
    p.add_argument("--images", type=Path, help="real data: the image folder")
    p.add_argument("--splits", nargs="+", default=None, help="real data: splits to load (default: val test)")


def load(args: argparse.Namespace) -> datasets.DatasetDict:
    """The requested dataset; real-data loaders validate every file before anything is written."""
    check_choice("dataset", args.dataset, DATASETS)
    if args.dataset == "scenes":
        from free_bench.data.scenes_dataset import build_scenes

        check_choice("profile", args.profile, list(PROFILES))
        return build_scenes(args.profile, args.seed)
    from free_bench.data import loaders

    if args.images is None:
        raise FreeBenchError(f"--images is required for --dataset {args.dataset}")
    splits = args.splits or ["val", "test"]
    for s in splits:
        check_choice("split", s, SPLITS)
    if args.dataset == "coco-karpathy":
        if args.annotations is None:
            raise FreeBenchError(
                "--annotations (the Karpathy dataset_coco.json) is required for coco-karpathy"
            )
        return datasets.DatasetDict(
            {s: loaders.load_coco_karpathy(args.annotations, args.images, s) for s in splits}
        )
    if args.questions is None:
        raise FreeBenchError("--questions (the VQAv2 questions JSON) is required for vqav2")
    return datasets.DatasetDict(
        {s: loaders.load_vqav2(args.questions, args.annotations, args.images, s) for s in splits}
    )


def count_table(ds: datasets.DatasetDict) -> pd.DataFrame:
    """Rows per split x question type, with totals."""
    frames = [pd.DataFrame({"split": split, "question_type": ds[split]["question_type"]}) for split in ds]
    df = pd.concat(frames, ignore_index=True)
    table = pd.crosstab(df["split"], df["question_type"], margins=True, margins_name="total")
    order = [s for s in SPLITS if s in table.index] + ["total"]
    return table.loc[order]


def run(args: argparse.Namespace) -> int:
    ds = load(args)
    for split, d in ds.items():
        if len(d) == 0:
            raise FreeBenchError(f"split {split!r} of {args.dataset} is empty")
    manifest = Manifest("data", {k: str(v) for k, v in vars(args).items()}, seeds=[args.seed])
    out: Path = args.out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    from free_bench.data.scenes_dataset import dataset_hash

    manifest.update(dataset_hash=dataset_hash(ds), rows={s: len(d) for s, d in ds.items()})
    manifest.write(tmp / "manifest.json")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(count_table(ds).to_string())
    print(f"wrote {sum(len(d) for d in ds.values())} rows to {out}")
    return 0


command(
    "data",
    "Write a dataset to disk and print its counts per split and question type.",
    "free-bench data --dataset scenes --profile smoke --out data/scenes-smoke",
    _add_args,
    run,
)
