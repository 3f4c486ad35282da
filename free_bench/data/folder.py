"""A data folder: a dataset written by `free-bench data` (`datasets.save_to_disk` layout) with a
manifest recording what made it, so a rerun reuses it only with the same settings.

`dataset_config` names everything that decides the rows, `build_dataset` makes them from that
config alone, and `write_dataset` writes the folder atomically (checked and built before anything is
written; a folder this suite did not write is never replaced).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets

from free_bench.config import DATASETS, PROFILES, SPLITS
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import Manifest, atomic_dir, read_json
from free_bench.core.runs import check_same, check_writable, writer_lock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def dataset_config(dataset: str, *, profile: str = "smoke", seed: int = 0, annotations: Path | None = None,
                   questions: Path | None = None, images: Path | None = None,
                   splits: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """What decides the rows: the scenes profile and seed, or the real files (absolute paths) and splits."""
    check_choice("dataset", dataset, DATASETS)
    if dataset == "scenes":
        check_choice("profile", profile, list(PROFILES))
        return {"dataset": dataset, "profile": profile, "seed": seed}
    files = {"annotations": annotations, "questions": questions, "images": images}
    return {"dataset": dataset, **{k: None if v is None else str(Path(v).resolve()) for k, v in files.items()},
            "splits": list(splits or ["val", "test"])}  # fmt: skip


def build_dataset(config: dict[str, Any]) -> datasets.DatasetDict:
    """The rows `config` names; real-data loaders validate every file before anything is written."""
    if config["dataset"] == "scenes":
        from free_bench.data.scenes_dataset import build_scenes

        return build_scenes(config["profile"], config["seed"])
    from free_bench.data import loaders

    if config["images"] is None:
        raise FreeBenchError(f"--images is required for --dataset {config['dataset']}")
    for s in config["splits"]:
        check_choice("split", s, SPLITS)
    images = Path(config["images"])
    if config["dataset"] == "coco-karpathy":
        if config["annotations"] is None:
            raise FreeBenchError("--annotations (the Karpathy dataset_coco.json) is required for coco-karpathy")
        karpathy = Path(config["annotations"])
        return datasets.DatasetDict({s: loaders.load_coco_karpathy(karpathy, images, s) for s in config["splits"]})
    if config["questions"] is None:
        raise FreeBenchError("--questions (the VQAv2 questions JSON) is required for vqav2")
    questions = Path(config["questions"])
    annotations = None if config["annotations"] is None else Path(config["annotations"])
    return datasets.DatasetDict(
        {s: loaders.load_vqav2(questions, annotations, images, s) for s in config["splits"]}
    )


def write_dataset(out: Path, config: dict[str, Any], *, overwrite: bool = False) -> datasets.DatasetDict | None:
    """Build the rows of `config` and write them to `out`; None when `out` already holds them (reused).

    A data folder made with other settings is an error naming the fields unless `overwrite`; a folder
    that is not a data folder is never touched, `overwrite` or not."""
    from free_bench.data.scenes_dataset import dataset_hash

    out = Path(out)
    check_writable(out)
    with writer_lock(out):
        if (out / MANIFEST).is_file():
            made = read_json(out / MANIFEST)
            if made.get("command") != "data":
                raise FreeBenchError(f"{out} holds a {made.get('command')!r} run, not a dataset; choose another --out")
            if not overwrite:
                check_same("a dataset", out, made.get("config", {}), config)
                log.info("%s already holds this dataset: reused", out)
                return None
        elif out.exists() and any(out.iterdir()):
            raise FreeBenchError(f"{out} exists and is not a dataset written by free-bench; choose another --out")
        ds = build_dataset(config)
        for split, d in ds.items():
            if len(d) == 0:
                raise FreeBenchError(f"split {split!r} of {config['dataset']} is empty")
        manifest = Manifest("data", config, seeds=[config.get("seed", 0)])
        with atomic_dir(out) as tmp:
            ds.save_to_disk(str(tmp))
            manifest.update(dataset_hash=dataset_hash(ds), rows={s: len(d) for s, d in ds.items()})
            manifest.write(tmp / MANIFEST)
    log.info("wrote %d rows to %s", sum(len(d) for d in ds.values()), out)
    return ds
