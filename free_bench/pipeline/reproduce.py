"""`reproduce`: data -> backbone -> exits -> sweeps -> robustness -> report, into results/<profile>/,
reusing finished stages.

Stages are functions `(ctx) -> dict` run in `STAGES` order; each writes its outputs atomically and a
done-marker into the cache, so a killed run resumes at the first unfinished stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from free_bench.config import cache_dir, get_profile
from free_bench.core.records import Manifest, atomic_path, write_json
from free_bench.pipeline import stages
from free_bench.pipeline.context import Context

log = logging.getLogger(__name__)


def data_stage(ctx: Context) -> dict:
    """The profile's scenes, generated (or reused from the cache); their counts to results/."""
    from free_bench.data.scenes_dataset import count_table, load_scenes, scenes_hash

    ds = load_scenes(ctx.profile, ctx.seed)
    table = count_table(ds)
    with atomic_path(ctx.results / "data_counts.csv") as tmp:
        table.to_csv(tmp)
    return {"dataset_hash": scenes_hash(ctx.profile, ctx.seed), "rows": {s: len(d) for s, d in ds.items()}}


def backbone_stage(ctx: Context) -> dict:
    """Pretrain (or reuse) the embedded backbone; copy its manifest and quality report to results/."""
    from free_bench.models.embedded_cache import check_current, embedded_dir
    from free_bench.pipeline.backbone import pretrain_into

    spec = f"embedded:{ctx.profile}"
    folder = embedded_dir(spec, ctx.seed)
    if not (folder / "manifest.json").exists():
        pretrain_into(folder, ctx.profile, "opt", seed=ctx.seed)
    check_current(folder, ctx.profile, "opt")
    out = ctx.results / "backbone"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "quality.json"):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes((folder / name).read_bytes())
    quality = json.loads((folder / "quality.json").read_text())
    return {"backbone": spec, "vqa_accuracy": quality["vqa_accuracy"], "folder": str(folder)}


STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("data", data_stage),
    ("backbone", backbone_stage),
    ("exits", stages.exits_stage),
    ("sweeps", stages.sweeps_stage),
    ("robustness", stages.robustness_stage),
    ("report", stages.report_stage),
]


def _write_manifest(manifest: Manifest, spent: dict[str, float], ctx: Context) -> None:
    manifest.update(stage_seconds=spent, total_seconds=round(sum(spent.values()), 1),
                    dataset_hash=manifest.data.get("data", {}).get("dataset_hash"))  # fmt: skip
    manifest.write(ctx.results / "manifest.json")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def default_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def context(profile: str, seed: int = 0, results: Path = Path("results")) -> Context:
    get_profile(profile)
    return Context(profile, seed, results / profile, cache_dir() / "reproduce" / profile)


def clear(ctx: Context) -> None:
    """Remove what reproduce made in the cache for this profile and seed: its stage markers and work
    folders, the embedded backbone and the generated dataset (all of it written by reproduce)."""
    from free_bench.data.scenes_dataset import cache_key
    from free_bench.models.embedded_cache import embedded_dir

    for folder in (ctx.cache, embedded_dir(f"embedded:{ctx.profile}", ctx.seed),
                   cache_dir() / "data" / cache_key(ctx.profile, ctx.seed)):  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def reproduce(ctx: Context) -> Path:
    """Every stage in order, each reused when its marker says it finished; returns the results folder."""
    ctx.results.mkdir(parents=True, exist_ok=True)
    manifest = Manifest("reproduce", {"profile": ctx.profile, "seed": ctx.seed}, seeds=[ctx.seed])
    # seconds per stage, summed over every run that worked on it (a stage killed by a time limit and
    # resumed by the next run counts both parts); SIGTERM (`timeout`) unwinds so the part is counted
    spent_file = ctx.cache / "stage_seconds.json"
    spent: dict[str, float] = json.loads(spent_file.read_text()) if spent_file.exists() else {}
    signal.signal(signal.SIGTERM, _terminate)
    for index, (name, fn) in enumerate(STAGES, start=1):
        done = ctx.cache / f"{name}.done.json"
        where = f"[{index}/{len(STAGES)} {name}]"
        if done.exists():
            log.info("%s reused (finished earlier; --fresh recomputes)", where)
            manifest.update(**{name: json.loads(done.read_text())})
            continue
        log.info("%s started", where)
        t0 = time.perf_counter()
        try:
            out = fn(ctx)
        finally:
            spent[name] = round(spent.get(name, 0.0) + time.perf_counter() - t0, 2)
            write_json(spent, spent_file)
        log.info("%s done in %.1f s", where, spent[name])
        write_json(out, done)
        manifest.update(**{name: out})
        _write_manifest(manifest, spent, ctx)  # after every stage: the report stage reads it
    _write_manifest(manifest, spent, ctx)
    return ctx.results
