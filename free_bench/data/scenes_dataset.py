"""Build the `scenes` splits as a `datasets.DatasetDict`, cached on disk by (seed, profile, version)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from free_bench.config import ScenesConfig, cache_dir, get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.data import questions as Q
from free_bench.data import scenes as S
from free_bench.data.schema import SPLITS, features

_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
_UNLABELED = {"unlabeled"}  # images and questions only: no answers, no captions
_CHUNK = 500  # images per parallel work item


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def generate_split(
    cfg: ScenesConfig, split: str, seed: int, progress: bool = True, pool: Executor | None = None
) -> list[dict]:
    """Rows of one split. Image i of split s draws from its own RNG (seed, s, i), so chunks of images
    can render in a process `pool` and the rows are identical with or without one."""
    n = cfg.images[split]
    chunks = [(cfg, split, seed, range(i, min(i + _CHUNK, n))) for i in range(0, n, _CHUNK)]
    results = pool.map(_chunk_rows, chunks) if pool else map(_chunk_rows, chunks)
    rows: list[dict] = []
    with tqdm(total=n, desc=f"scenes/{split}", disable=not progress, leave=False) as bar:
        for (*_, indices), chunk in zip(chunks, results, strict=True):
            rows.extend(chunk)
            bar.update(len(indices))
    return rows


def _chunk_rows(args: tuple[ScenesConfig, str, int, range]) -> list[dict]:
    cfg, split, seed, indices = args
    held_out = S.novel_pairs(cfg.novel_pairs)
    novel = split == "test_novel"
    rows: list[dict] = []
    for i in indices:
        rng = np.random.default_rng([seed, _SPLIT_INDEX[split], i, S.GENERATOR_VERSION])
        objects = S.sample_scene(rng, cfg.grid, cfg.max_objects, held_out, novel=novel)
        png = _png(S.render(objects, cfg.image_size, cfg.grid, rng))
        focus = [o for o in objects if (o.color, o.shape) in held_out] if novel else None
        image_id = f"scenes-{split}-{i:06d}"
        refs = [] if split in _UNLABELED else Q.captions(objects)
        seen: set[str] = set()
        for j in range(cfg.questions_per_image[split]):
            q = Q.make_question(rng, objects, focus)
            if q.text in seen:  # one question text per image; a repeat adds nothing
                continue
            seen.add(q.text)
            labelled = split not in _UNLABELED
            rows.append(
                {
                    "image": {"bytes": png, "path": None},
                    "image_id": image_id,
                    "question_id": f"{image_id}-q{j}",
                    "question": q.text,
                    "answers": Q.human_answers(rng, q) if labelled else [],
                    "answer": q.answer if labelled else "",
                    "question_type": q.question_type,
                    "difficulty": q.difficulty,
                    "captions": refs,
                    "scene": S.scene_to_json(objects),
                    "split": split,
                }
            )
    return rows


def build_scenes(profile: str, seed: int = 0, progress: bool = True) -> datasets.DatasetDict:
    """All six splits, in memory; rendered on every core when there is more than a chunk of images."""
    cfg = get_profile(profile).scenes
    workers = min(os.cpu_count() or 1, sum(-(-n // _CHUNK) for n in cfg.images.values()))
    # fork, not spawn: spawn re-imports the caller's __main__, which breaks any script without a main
    # guard; the workers only draw with numpy and PIL and never touch torch's thread pools.
    fork = "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork") if fork else None
    pool = ProcessPoolExecutor(workers, mp_context=ctx) if fork and workers > 1 else None
    try:
        return datasets.DatasetDict(
            {
                split: datasets.Dataset.from_list(
                    generate_split(cfg, split, seed, progress, pool), features=features()
                )
                for split in SPLITS
            }
        )
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def cache_key(profile: str, seed: int) -> str:
    """Profile, seed, generator version and a hash of the profile's scenes config: editing the config
    (image counts, sizes) gets a new dataset instead of silently reusing the old one."""
    config = json.dumps(dataclasses.asdict(get_profile(profile).scenes), sort_keys=True)
    digest = hashlib.sha256(config.encode()).hexdigest()[:8]
    return f"scenes-{profile}-seed{seed}-v{S.GENERATOR_VERSION}-{digest}"


def load_scenes(
    profile: str, seed: int = 0, *, root: Path | None = None, progress: bool = True
) -> datasets.DatasetDict:
    """The cached dataset, generated on first use; the cache write is atomic (temp dir + rename)."""
    get_profile(profile)  # validate the name first
    path = (root or cache_dir() / "data") / cache_key(profile, seed)
    if not (path / "meta.json").exists():
        ds = build_scenes(profile, seed, progress)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        meta = {"profile": profile, "seed": seed, "version": S.GENERATOR_VERSION, "hash": dataset_hash(ds)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return datasets.load_from_disk(str(path))


def dataset_hash(ds: datasets.DatasetDict) -> str:
    """Content hash of every split (ids, texts, answers, image bytes), for manifests. Image bytes go in
    as bytes (length-prefixed), not through repr(): on the gpu profile's 78k rows repr took ~11 s of the
    data stage (commit 8c2b62a), this well under a second. An image kept by path (the real-data loaders
    keep RGB files so) goes in as its file's bytes, which is what `save_to_disk` embeds: a data folder
    hashes the same before and after it is written, and scenes hashes (all bytes) are unchanged."""
    h = hashlib.sha256()
    for split in sorted(ds):
        table = ds[split].with_format("arrow")[:]  # pyarrow.Table, images as raw bytes
        for column in ("question_id", "question", "answers", "captions"):
            h.update(repr(table.column(column).to_pylist()).encode())
        images = table.column("image").combine_chunks()
        paths = images.field("path").to_pylist()
        for png, path in zip(images.field("bytes").to_pylist(), paths, strict=True):
            try:
                data = png if png is not None else Path(path).read_bytes()
            except OSError as exc:
                raise FreeBenchError(f"cannot read image {path} to hash the dataset: {exc}") from exc
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()[:16]


def scenes_hash(profile: str, seed: int = 0, root: Path | None = None) -> str | None:
    """The content hash recorded when the cached dataset was written (None if not cached)."""
    meta = (root or cache_dir() / "data") / cache_key(profile, seed) / "meta.json"
    return json.loads(meta.read_text())["hash"] if meta.exists() else None


def count_table(ds: datasets.DatasetDict) -> pd.DataFrame:
    """Rows per split x question type, with totals."""
    frames = [pd.DataFrame({"split": split, "question_type": ds[split]["question_type"]}) for split in ds]
    df = pd.concat(frames, ignore_index=True)
    table = pd.crosstab(df["split"], df["question_type"], margins=True, margins_name="total")
    order = [s for s in SPLITS if s in table.index] + ["total"]
    return table.loc[order]
