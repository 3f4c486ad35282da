"""Sweeps as plain data (a worker process runs one without the profile in memory), and running one.

A planned sweep is its `SweepSpec` fields, its work folder in the cache and where its tables are
copied in results/; `run_planned` runs (or resumes) it there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from free_bench.core.records import atomic_path, write_json
from free_bench.pipeline.context import Context

if TYPE_CHECKING:
    from free_bench.models.base import Backbone


log = logging.getLogger(__name__)

def copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def sweep_plan(ctx: Context, name: str, method: str, exits: Path, split: str, mode: str, thresholds,
               seed: int = 0, **opts) -> dict:  # fmt: skip
    """One sweep as plain data: its spec, its work folder in the cache, where its tables are copied."""
    profile = ctx.settings
    spec = {"method": method, "exits": str(exits), "split": split, "mode": mode,
            "thresholds": [float(t) for t in thresholds], "exits_at": profile.exits.sparse, **opts}  # fmt: skip
    dst = None if name.startswith("rob/") else str(ctx.results / "sweeps" / name)  # rob/: gathered instead
    return {"name": name, "seed": seed, "spec": spec, "work": str(ctx.cache / "sweeps" / name), "dst": dst}


def run_planned(plan: dict, loaded=None, backbone: Callable[[], Backbone] | None = None) -> pd.DataFrame:
    """Run (or resume) a planned sweep; copy its tables and manifest (with its seed) to `dst`. `loaded`:
    the method already loaded; else `backbone()`, called only when the sweep has work left: load the
    exits onto that backbone instead of loading it from disk again."""
    from free_bench.evaluation.sweep import SweepSpec, load_method, run_sweep, sweep_finished

    fields = {**plan["spec"], "thresholds": tuple(plan["spec"]["thresholds"])}
    spec = SweepSpec(**{**fields, "tasks": tuple(fields.get("tasks", ("vqa",)))})
    work = Path(plan["work"])
    finished = sweep_finished(spec, work)
    points = len(spec.thresholds) * len(spec.tasks)
    if finished:
        log.debug("[sweep] %s: finished earlier, reused", plan["name"])
    else:
        log.info("[sweep] %s: %s, %d point(s) on %s", plan["name"], spec.mode, points, spec.split)
    if loaded is None and backbone is not None and not finished:
        loaded = load_method(spec, None, backbone())
    t0 = time.perf_counter()
    df = run_sweep(spec, work, progress=False, loaded=loaded)
    if not finished:
        log.info("[sweep] %s: done in %.1f s", plan["name"], time.perf_counter() - t0)
    if plan["dst"] is not None:
        dst = Path(plan["dst"])
        caption_texts = ["captions.parquet"] if (work / "captions.parquet").exists() else []
        for f in ["sweep.parquet", "samples.parquet", *caption_texts]:
            copy_file(work / f, dst / f)
        manifest = json.loads((work / "manifest.json").read_text())
        write_json({**manifest, "seed": plan["seed"], "sweep": plan["name"]}, dst / "manifest.json")
    return df
