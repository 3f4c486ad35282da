"""Export generated scenes in the official VQAv2 or COCO Karpathy file layouts.

So the real-data path (loaders, split division, every engine) can be tested end to end on data whose
rows are known exactly: `free-bench data --dataset scenes --export vqav2|coco-karpathy --out D`
writes one file set per split, which the normal loaders read back to the same rows:

- ``D/<split>/questions.json`` and ``D/<split>/annotations.json`` (VQAv2; no annotations for
  ``unlabeled``), or ``D/<split>/dataset_coco.json`` (Karpathy; its ``split`` is ``train`` or
  ``val`` for those splits and ``test`` for every other one);
- ``D/<split>/images/COCO_<split>2014_<image_id:012d>.png``: the scenes PNG bytes unchanged, so the
  round trip is bit-exact (the VQAv2 loader finds them by the trailing 12-digit id);
- ``D/export.json``: profile, seed, splits and, per split, the integer ids back to the scenes ids.

Integer ids are unique across splits: image id ``1_000_000 * k + i`` (``k`` the split's index in
config.SPLITS, ``i`` the image's index in the split) and question id ``1000 * image_id + j``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from free_bench.config import SPLITS
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import Manifest, atomic_dir
from free_bench.data.folder import build_dataset, dataset_config, reusable, writing
from free_bench.data.scenes_dataset import dataset_hash
from free_bench.data.splitting import UNLABELED

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("vqav2", "coco-karpathy")
EXPORT = "export.json"
IMAGE_STRIDE = 1_000_000  # images per split at most
QUESTION_STRIDE = 1000  # questions per image at most
ANSWER_TYPES = {"exist": "yes/no", "count": "number"}  # every other scenes family: "other"
_PNG = b"\x89PNG\r\n\x1a\n"


def export_config(fmt: str, *, profile: str = "smoke", seed: int = 0,
                  splits: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """What decides the exported files: the scenes settings, every split named, and the format."""
    check_choice("export format", fmt, FORMATS)
    scenes = dataset_config("scenes", profile=profile, seed=seed, splits=splits)
    return {**scenes, "splits": scenes.get("splits", list(SPLITS)), "export": fmt}


def write_export(
    out: Path, config: dict[str, Any], *, overwrite: bool = False
) -> datasets.DatasetDict | None:
    """Write the export of `config` to `out` atomically; None when `out` already holds it (reused)."""
    out = Path(out)
    with writing(out):
        if reusable(out, EXPORT, "data-export", "a scenes export", config, overwrite):
            return None
        scenes = {k: v for k, v in config.items() if k != "export"}
        ds = build_dataset(scenes)
        files: dict[str, Any] = {}  # relative path -> JSON document
        images: dict[str, bytes] = {}  # relative path -> PNG bytes
        ids: dict[str, dict[str, dict[str, str]]] = {}
        for split in config["splits"]:
            ids[split] = _export_split(ds[split], split, config, files, images)
        record = Manifest("data-export", config, seeds=[config["seed"]], dataset_hash=dataset_hash(ds))
        record.update(format=config["export"], profile=config["profile"], seed=config["seed"],
                      splits=config["splits"], ids=ids)  # fmt: skip
        with atomic_dir(out) as tmp:
            for rel, doc in files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_text(json.dumps(doc), encoding="utf-8")
            for rel, png in images.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(png)
            record.write(tmp / EXPORT)
    log.info("exported %d images of %s as %s to %s", len(images), config["splits"], config["export"], out)
    return ds


def _export_split(d: datasets.Dataset, split: str, config: dict[str, Any], files: dict[str, Any],
                  images: dict[str, bytes]) -> dict[str, dict[str, str]]:  # fmt: skip
    """Add one split's documents and images; return its maps from integer ids to scenes ids."""
    subset = f"{split}2014"
    table = d.with_format("arrow")[:]
    rows = table.drop_columns(["image"]).to_pylist()
    pngs = table.column("image").combine_chunks().field("bytes").to_pylist()
    int_of: dict[str, int] = {}  # scenes image id -> integer image id, in order of first appearance
    first_row: dict[str, int] = {}  # scenes image id -> its first row (captions and image)
    asked: dict[str, int] = {}  # scenes image id -> questions exported so far
    question_ids: dict[str, str] = {}
    questions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    base = IMAGE_STRIDE * SPLITS.index(split)
    for r, row in enumerate(rows):
        sid = row["image_id"]
        if sid not in int_of:
            if len(int_of) >= IMAGE_STRIDE:
                raise FreeBenchError(f"split {split!r} has over {IMAGE_STRIDE} images: too many to export")
            if pngs[r] is None or not pngs[r].startswith(_PNG):
                raise FreeBenchError(f"scenes image {sid} of split {split!r} is not stored as PNG bytes")
            int_of[sid], first_row[sid], asked[sid] = base + len(int_of), r, 0
            images[f"{split}/images/COCO_{subset}_{int_of[sid]:012d}.png"] = pngs[r]
        image_id, j = int_of[sid], asked[sid]
        if j >= QUESTION_STRIDE:
            raise FreeBenchError(
                f"scenes image {sid} has over {QUESTION_STRIDE} questions: too many to export"
            )
        asked[sid] = j + 1
        qid = QUESTION_STRIDE * image_id + j
        question_ids[str(qid)] = row["question_id"]
        questions.append({"image_id": image_id, "question": row["question"], "question_id": qid})
        annotations.append(_annotation(row, image_id, qid))
    image_ids = {str(i): sid for sid, i in int_of.items()}
    header = _header(config, subset)
    if config["export"] == "vqav2":
        files[f"{split}/questions.json"] = {**header, "task_type": "Open-Ended", "questions": questions}
        if split not in UNLABELED:
            files[f"{split}/annotations.json"] = {**header, "annotations": annotations}
        return {"image_ids": image_ids, "question_ids": question_ids}
    records = [_karpathy_image(rows[r], int_of[sid], split, subset) for sid, r in first_row.items()]
    files[f"{split}/dataset_coco.json"] = {"images": records, "dataset": "coco"}
    return {"image_ids": image_ids}


def _header(config: dict[str, Any], subset: str) -> dict[str, Any]:
    """The descriptive fields both official VQAv2 files carry."""
    return {
        "info": {
            "description": f"free-bench scenes (profile {config['profile']}, seed {config['seed']}) "
            "in the VQAv2 layout",
            "version": "2.0",
        },
        "license": {"name": "same as free-bench", "url": ""},
        "data_type": "mscoco",
        "data_subtype": subset,
    }


def _annotation(row: dict[str, Any], image_id: int, qid: int) -> dict[str, Any]:
    return {
        "question_id": qid,
        "image_id": image_id,
        "question_type": row["question_type"],
        "answer_type": ANSWER_TYPES.get(row["question_type"], "other"),
        "multiple_choice_answer": row["answer"],
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
            for i, a in enumerate(row["answers"])
        ],
    }


def _karpathy_image(row: dict[str, Any], image_id: int, split: str, subset: str) -> dict[str, Any]:
    """One dataset_coco.json image record; imgid is the (unique) image id, sentid 1000 * it + j."""
    sentids = [QUESTION_STRIDE * image_id + j for j in range(len(row["captions"]))]
    sentences = [
        {"raw": c, "tokens": re.findall(r"[a-z0-9]+", c.lower()), "imgid": image_id, "sentid": s}
        for c, s in zip(row["captions"], sentids, strict=True)
    ]
    return {
        "filepath": "images",
        "filename": f"COCO_{subset}_{image_id:012d}.png",
        "imgid": image_id,
        "cocoid": image_id,
        "split": split if split in ("train", "val") else "test",
        "sentences": sentences,
        "sentids": sentids,
    }
