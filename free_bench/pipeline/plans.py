"""Sweeps as plain data (a worker process runs one without the profile in memory), and running one.

A planned sweep is its `SweepSpec` fields, its work folder in the cache and where its tables are
copied in results/; `run_planned` runs (or resumes) it there.
"""

from __future__ import annotations

import functools
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
    from free_bench.evaluation.sweep import SweepSpec
    from free_bench.models.base import Backbone


log = logging.getLogger(__name__)

def copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def sweep_plan(ctx: Context, name: str, method: str, exits: Path, split: str, mode: str, thresholds,
               seed: int = 0, **opts) -> dict:  # fmt: skip
    """One sweep as plain data: its spec, its work folder in the cache, where its tables are copied."""
    profile = ctx.settings
    if opts.get("engine", "eager") != "eager":
        # HF `generate()` is timed beside the eager engine's sweeps of the same rows; beside another
        # engine's it would be most of the sweep's time (the gpu profile at 058e16a: HF over 30 ms a
        # question, the graphs engine's full model 3.9) for a reference no table reads
        opts.setdefault("hf_baseline", False)
    spec = {"method": method, "exits": str(exits), "split": split, "mode": mode,
            "thresholds": [float(t) for t in thresholds], "exits_at": profile.exits.sparse, **opts}  # fmt: skip
    dst = None if name.startswith("rob/") else str(ctx.results / "sweeps" / name)  # rob/: gathered instead
    return {"name": name, "seed": seed, "spec": spec, "work": str(ctx.cache / "sweeps" / name), "dst": dst}


def plan_spec(plan: dict) -> SweepSpec:
    """The `SweepSpec` a planned sweep runs."""
    from free_bench.evaluation.sweep import SweepSpec

    fields = {**plan["spec"], "thresholds": tuple(plan["spec"]["thresholds"])}
    return SweepSpec(**{**fields, "tasks": tuple(fields.get("tasks", ("vqa",)))})


def run_planned(plan: dict, loaded=None, backbone: Callable[[], Backbone] | None = None,
                loader: Callable[[SweepSpec], tuple] | None = None) -> pd.DataFrame:  # fmt: skip
    """Run (or resume) a planned sweep; copy its tables and manifest (with its seed) to `dst`. `loaded`:
    the method already loaded; else, only when the sweep has work left, `loader(spec)` (a stage's shared
    loader) or the exits loaded onto `backbone()` instead of loading the backbone from disk again."""
    from free_bench.evaluation.sweep import load_method, run_sweep, sweep_finished

    spec = plan_spec(plan)
    work = Path(plan["work"])
    finished = sweep_finished(spec, work)
    points = len(spec.thresholds) * len(spec.tasks)
    if finished:
        log.debug("[sweep] %s: finished earlier, reused", plan["name"])
    else:
        log.info("[sweep] %s: %s, %d point(s) on %s", plan["name"], spec.mode, points, spec.split)
    if loaded is None and not finished:
        if loader is not None:
            loaded = loader(spec)
        elif backbone is not None:
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


def shared_backbone(exits: Path) -> Callable[[], Backbone]:
    """The backbone `exits` were trained on, loaded on the first call and kept: a stage's sweeps then
    share it, so the full model's captured decoders and the shapes warmed before timing (which live on
    the backbone) carry over from one method's sweep to the next instead of each loading its own."""
    from free_bench.methods import load_exits

    return functools.cache(lambda: load_exits(exits).backbone)


def shared_method(backbone: Callable[[], Backbone]) -> Callable[[SweepSpec], tuple]:
    """`load_method` onto `backbone()`, the last method kept: consecutive sweeps of one run (its batch
    sizes, engines and speculative decodes) share its exits and the graphs engine's decoders captured on
    them, instead of capturing them again per sweep. One at a time, so a stage holds one run's captures."""
    from free_bench.evaluation.sweep import load_method

    kept: dict[tuple, tuple] = {}

    def load(spec: SweepSpec) -> tuple:
        key = (spec.method, spec.exits, spec.exits_at)
        if key not in kept:
            kept.clear()
            kept[key] = load_method(spec, None, backbone())
        return kept[key]

    return load
