"""A data folder: a dataset written by `free-bench data` (`datasets.save_to_disk` layout) with a
manifest recording what made it, so a rerun reuses it only with the same settings.

`dataset_config` names everything that decides the rows, `build_dataset` makes them from that
config alone, and `write_dataset` writes the folder atomically (checked, built and hashed before
anything is written; a failure leaves nothing behind; a folder this suite did not write is never
replaced).

What `splits` means per dataset:

- ``scenes``: which of the six generated splits to write (default: all six).
- ``vqav2``: the one file set's images are divided among the splits by `splitting.RULE` and
  `fractions` (default: equal shares); one split takes every row.
- ``coco-karpathy``: without `source_split`, each split (train, val or test) takes the Karpathy split
  of that name (train takes restval too); with `source_split` K, the images of Karpathy split K are
  divided among the splits (any of ours) as for vqav2.

The ``unlabeled`` split never carries answers or captions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

from free_bench.config import DATASETS, PROFILES, SPLITS
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import Manifest, atomic_dir, read_json
from free_bench.core.runs import check_same, check_writable, writer_lock
from free_bench.data import splitting

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

#: how coco-karpathy splits are chosen without --source-split.
KARPATHY_RULE = "karpathy-names: each split takes the Karpathy split of its name (train also restval)"


def dataset_config(dataset: str, *, profile: str = "smoke", seed: int = 0, annotations: Path | None = None,
                   questions: Path | None = None, images: Path | None = None,
                   splits: Sequence[str] | None = None, fractions: Sequence[float] | None = None,
                   source_split: str | None = None, keep_first: bool = False) -> dict[str, Any]:  # fmt: skip
    """What decides the rows: the scenes profile, seed and splits, or the real files (absolute paths),
    the splits and how they are divided. Every flag is checked here, before any file is read."""
    check_choice("dataset", dataset, DATASETS)
    if dataset != "coco-karpathy" and source_split is not None:
        raise FreeBenchError(
            "--source-split (a Karpathy split to divide) applies to --dataset coco-karpathy only"
        )
    if dataset == "scenes":
        check_choice("profile", profile, list(PROFILES))
        if fractions is not None or keep_first:
            raise FreeBenchError(
                "--fractions and --keep-first apply to real files (vqav2, coco-karpathy); scenes splits "
                "are generated whole: pick them with --splits"
            )
        config: dict[str, Any] = {"dataset": dataset, "profile": profile, "seed": seed}
        chosen = set(splitting.check_splits(splits or SPLITS))
        if chosen != set(SPLITS):  # all six is recorded as before, so existing folders stay reusable
            config["splits"] = [s for s in SPLITS if s in chosen]
        return config
    files = {"annotations": annotations, "questions": questions, "images": images}
    config = {
        "dataset": dataset,
        **{k: None if v is None else str(Path(v).resolve()) for k, v in files.items()},
    }
    chosen = splitting.check_splits(splits or ["val", "test"])
    if dataset == "coco-karpathy" and source_split is None:
        from free_bench.data.loaders import KARPATHY_SPLITS

        for s in chosen:
            if s not in KARPATHY_SPLITS:
                raise FreeBenchError(
                    f"coco-karpathy split {s!r}: without --source-split each of --splits takes the Karpathy "
                    f"split of its name ({', '.join(KARPATHY_SPLITS)}); to fill {s!r}, divide a Karpathy "
                    f"split with --source-split K --splits {s} ..."
                )
        if fractions is not None:
            raise FreeBenchError("--fractions divides a Karpathy split: give --source-split too")
        return {**config, "splits": chosen, "source_split": None, "fractions": None,
                "split_rule": KARPATHY_RULE, "keep_first": keep_first}  # fmt: skip
    if source_split is not None:
        from free_bench.data.loaders import KARPATHY_NAMES

        check_choice("Karpathy split", source_split, KARPATHY_NAMES)
        config["source_split"] = source_split
    return {**config, "splits": chosen, "fractions": splitting.check_fractions(chosen, fractions),
            "split_rule": splitting.RULE, "keep_first": keep_first}  # fmt: skip


def build_dataset(config: dict[str, Any]) -> datasets.DatasetDict:
    """The rows `config` names; real-data loaders validate every file before anything is written."""
    if config["dataset"] == "scenes":
        from free_bench.data.scenes_dataset import build_scenes

        ds = build_scenes(config["profile"], config["seed"])
        return datasets.DatasetDict({s: ds[s] for s in config.get("splits", SPLITS)})
    from free_bench.data import loaders

    if config["images"] is None:
        raise FreeBenchError(f"--images is required for --dataset {config['dataset']}")
    images, splits, keep_first = Path(config["images"]), config["splits"], config.get("keep_first", False)
    if config["dataset"] == "coco-karpathy":
        if config["annotations"] is None:
            raise FreeBenchError(
                "--annotations (the Karpathy dataset_coco.json) is required for coco-karpathy"
            )
        karpathy = Path(config["annotations"])
        source = config.get("source_split")
        if source is None:
            return datasets.DatasetDict(
                {s: loaders.load_coco_karpathy(karpathy, images, s, keep_first=keep_first) for s in splits}
            )
        rows = loaders.karpathy_rows(karpathy, images, (source,), keep_first=keep_first)
        where = f"Karpathy split {source!r} of {karpathy}"
    else:
        if config["questions"] is None:
            raise FreeBenchError("--questions (the VQAv2 questions JSON) is required for vqav2")
        questions = Path(config["questions"])
        annotations = None if config["annotations"] is None else Path(config["annotations"])
        rows = loaders.vqav2_rows(questions, annotations, images, keep_first=keep_first)
        if not rows:
            raise FreeBenchError(f"{questions} has no questions: every split would be empty")
        where = str(questions)
    parts = splitting.divide_rows(rows, splits, config["fractions"], where)
    return datasets.DatasetDict({s: loaders.to_dataset(parts[s]) for s in splits})


def write_dataset(
    out: Path, config: dict[str, Any], *, overwrite: bool = False
) -> datasets.DatasetDict | None:
    """Build the rows of `config` and write them to `out`; None when `out` already holds them (reused).

    A data folder made with other settings is an error naming the fields unless `overwrite`; a folder
    that is not a data folder is never touched, `overwrite` or not. Any failure leaves `out` as it was."""
    from free_bench.data.scenes_dataset import dataset_hash

    out = Path(out)
    with writing(out):
        if reusable(out, MANIFEST, "data", "a dataset", config, overwrite):
            return None
        ds = build_dataset(config)
        for split, d in ds.items():
            if len(d) == 0:
                raise FreeBenchError(f"split {split!r} of {config['dataset']} is empty")
        manifest = Manifest("data", config, seeds=[config.get("seed", 0)])
        manifest.update(dataset_hash=dataset_hash(ds), rows={s: len(d) for s, d in ds.items()})
        with atomic_dir(out) as tmp:
            ds.save_to_disk(str(tmp))
            manifest.write(tmp / MANIFEST)
    log.info("wrote %d rows to %s", sum(len(d) for d in ds.values()), out)
    return ds


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Hold `out`'s writer lock; if the block fails, remove the parent folders made for `out` too, so a
    failed write leaves nothing (atomic_dir removes its temp folder, writer_lock its lock file)."""
    check_writable(out)
    missing = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    try:
        with writer_lock(out):
            yield
    except BaseException:
        for p in missing:
            try:
                p.rmdir()
            except OSError:  # not empty: someone else wrote there meanwhile
                break
        raise


def reusable(
    out: Path, marker: str, command: str, what: str, config: dict[str, Any], overwrite: bool
) -> bool:
    """True when `out` already holds `what` made with `config`; an error when it holds other settings
    (unless `overwrite`), another run, or anything this suite did not write."""
    if (out / marker).is_file():
        made = read_json(out / marker)
        if made.get("command") != command:
            raise FreeBenchError(
                f"{out} holds a {made.get('command')!r} run, not {what}; choose another --out"
            )
        if not overwrite:
            check_same(what, out, made.get("config", {}), config)
            log.info("%s already holds %s made with these settings: reused", out, what)
            return True
    elif out.exists() and any(out.iterdir()):
        raise FreeBenchError(f"{out} exists and is not {what} written by free-bench; choose another --out")
    return False
