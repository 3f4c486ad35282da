"""`free-bench data`: materialise a dataset (scenes or real files) and print its counts.

What `--splits` means depends on `--dataset`:

- scenes: which of the six generated splits to write (default: all six);
- vqav2: the one questions/annotations/images file set is divided by image among the listed splits
  (by `--fractions`, default equal shares; the rule is `free_bench.data.splitting.RULE`): no row and
  no image lands in two splits;
- coco-karpathy: each of train/val/test takes Karpathy's split of that name (train also restval);
  with `--source-split K`, Karpathy split K is divided among the listed splits (any of ours) instead.

`unlabeled` never carries answers or captions. `--export` writes scenes in the VQAv2 or Karpathy
file layouts instead of the `save_to_disk` one (see `free_bench.data.export`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import add_overwrite, command
from free_bench.config import DATASETS, PROFILES, SPLITS
from free_bench.core.errors import FreeBenchError

KARPATHY_NAMES = ("train", "restval", "val", "test")  # as in loaders.KARPATHY_NAMES (not imported: slow)
EXPORT_FORMATS = tuple(d for d in DATASETS if d != "scenes")


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="scenes", choices=DATASETS, help="(default: scenes)")
    p.add_argument("--profile", default="smoke", choices=list(PROFILES), help="scenes size (default: smoke)")
    p.add_argument("--seed", type=int, default=0, help="scenes generator seed (default: 0)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder (datasets.save_to_disk layout; with --export, the file sets)",
    )
    p.add_argument(
        "--annotations", type=Path, help="coco-karpathy: dataset_coco.json; vqav2: annotations JSON"
    )
    p.add_argument("--questions", type=Path, help="vqav2: the questions JSON")
    p.add_argument("--images", type=Path, help="real data: the image folder")
    p.add_argument(
        "--splits", nargs="+", default=None, choices=SPLITS, metavar="SPLIT",
        help="splits to write, from " + ", ".join(SPLITS) + ". scenes: which generated splits (default: "
        "all six). vqav2: the file set's images are divided among them by --fractions, no image in two "
        "splits (default: val test). coco-karpathy: each of train/val/test takes the Karpathy split of "
        "its name, train also restval (default: val test); with --source-split, any of ours. "
        "unlabeled never carries answers or captions",
    )  # fmt: skip
    p.add_argument(
        "--fractions", nargs="+", type=float, default=None, metavar="F",
        help="vqav2, or coco-karpathy with --source-split: each listed split's share of the images, one "
        "per split, positive, summing to 1 (default: equal shares). Images are ordered by sha256 of "
        "their id and cut at the rounded cumulative shares: exact to one image, the same on every rerun",
    )  # fmt: skip
    p.add_argument(
        "--source-split", choices=KARPATHY_NAMES, default=None, metavar="K",
        help="coco-karpathy: divide the images of Karpathy split K (" + ", ".join(KARPATHY_NAMES) + ") "
        "among --splits (any of ours, e.g. exit_train val test) by --fractions",
    )  # fmt: skip
    p.add_argument(
        "--keep-first", action="store_true",
        help="real data: keep the first of repeated question ids / annotations / Karpathy images and log "
        "how many were dropped (default: a repeat is an error)",
    )  # fmt: skip
    p.add_argument(
        "--export", choices=EXPORT_FORMATS, default=None,
        help="scenes only: write --splits as official file sets instead, --out/<split>/ with "
        "questions.json + annotations.json + images/ (vqav2) or dataset_coco.json + images/ "
        "(coco-karpathy), and --out/export.json mapping the integer ids back to the scenes ids",
    )  # fmt: skip
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    from free_bench.data.scenes_dataset import count_table

    if args.export is not None:
        from free_bench.data.export import export_config, write_export

        if args.dataset != "scenes":
            raise FreeBenchError(
                f"--export writes generated scenes; drop it or use --dataset scenes, not {args.dataset}"
            )
        others = [
            f for f in ("annotations", "questions", "images", "fractions", "source_split") if getattr(args, f)
        ]
        if others or args.keep_first:
            flags = ", ".join("--" + f.replace("_", "-") for f in others + ["keep_first"] * args.keep_first)
            raise FreeBenchError(f"--export takes no real-data flags ({flags})")
        config = export_config(args.export, profile=args.profile, seed=args.seed, splits=args.splits)
        ds = write_export(args.out, config, overwrite=args.overwrite)
    else:
        from free_bench.data.folder import dataset_config, write_dataset

        config = dataset_config(args.dataset, profile=args.profile, seed=args.seed, annotations=args.annotations,
                                questions=args.questions, images=args.images, splits=args.splits,
                                fractions=args.fractions, source_split=args.source_split,
                                keep_first=args.keep_first)  # fmt: skip
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
