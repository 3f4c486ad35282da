"""`free-bench data`: materialise a dataset (scenes or real files) and print its counts."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

from free_bench.cli.registry import add_overwrite, command
from free_bench.config import DATASETS, PROFILES, SPLITS
from free_bench.core.errors import FreeBenchError, check_choice

log = logging.getLogger(__name__)

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
    add_overwrite(p)
    p.add_argument("--splits", nargs="+", default=None, choices=SPLITS, help="real data: splits to load (default: val test)")


def load(args: argparse.Namespace):
    """The requested dataset; real-data loaders validate every file before anything is written."""
    import datasets

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


def _config(args: argparse.Namespace) -> dict:
    """What decides the rows: recorded in the manifest and compared on a rerun into the same --out."""
    real = {"annotations": args.annotations, "questions": args.questions, "images": args.images,
            "splits": args.splits or ["val", "test"]}  # fmt: skip
    config = {"dataset": args.dataset, **({"profile": args.profile, "seed": args.seed} if args.dataset == "scenes"
              else {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in real.items()})}  # fmt: skip
    return config


def run(args: argparse.Namespace) -> int:
    from free_bench.core.records import Manifest, read_json
    from free_bench.core.runs import check_same, check_writable, remove_run, writer_lock
    from free_bench.data.scenes_dataset import count_table, dataset_hash

    out: Path = args.out
    check_writable(out)
    config = _config(args)
    with writer_lock(out):
        if (out / "manifest.json").is_file():
            made = read_json(out / "manifest.json")
            if made.get("command") != "data":
                raise FreeBenchError(f"{out} holds a {made.get('command')!r} run, not a dataset; choose another --out")
            if not args.overwrite:
                check_same("a dataset", out, made.get("config", {}), config)
                log.info("%s already holds this dataset: reused", out)
                return 0
        elif out.exists() and any(out.iterdir()):
            raise FreeBenchError(f"{out} exists and is not a dataset written by free-bench; choose another --out")
        ds = load(args)
        for split, d in ds.items():
            if len(d) == 0:
                raise FreeBenchError(f"split {split!r} of {args.dataset} is empty")
        manifest = Manifest("data", config, seeds=[args.seed])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            ds.save_to_disk(str(tmp / "data"))
            for f in (tmp / "data").iterdir():
                f.rename(tmp / f.name)
            (tmp / "data").rmdir()
            manifest.update(dataset_hash=dataset_hash(ds), rows={s: len(d) for s, d in ds.items()})
            manifest.write(tmp / "manifest.json")
            if out.exists():
                remove_run(out, "manifest.json") if (out / "manifest.json").exists() else out.rmdir()
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(count_table(ds).to_string())
    log.info("wrote %d rows to %s", sum(len(d) for d in ds.values()), out)
    return 0


command(
    "data",
    "Write a dataset to disk and print its counts per split and question type.",
    "free-bench data --dataset scenes --profile smoke --out data/scenes-smoke",
    _add_args,
    run,
)
