"""The stages of `free-bench reproduce` after the backbone: exits -> sweeps -> robustness -> report.

Work folders (weights, sweep points) live in the cache (`Context.cache`), so a killed stage resumes:
`train-exits` from its checkpoint, a sweep from its finished points. Only tables and manifests are
copied into `results/<profile>/`. The profile's `ReproduceConfig` says what runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from free_bench.config import ENGINES, ReproduceConfig
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import SWEEP, SWEEP_SAMPLES, write_json, write_parquet
from free_bench.methods.rules import thresholds_for
from free_bench.pipeline.context import Context
from free_bench.pipeline.live import LiveRun
from free_bench.pipeline.plans import copy_file, run_planned, shared_backbone, shared_method, sweep_plan

if TYPE_CHECKING:
    from free_bench.models.base import Backbone


log = logging.getLogger(__name__)

def _cfg(ctx: Context) -> ReproduceConfig:
    return ctx.settings.reproduce


def run_names(ctx: Context) -> list[tuple[str, str, str, int]]:
    """(name, method, regime, seed) of every exit training; the seed suffix only where seeds vary."""
    cfg = _cfg(ctx)
    many = len(cfg.seeds) > 1
    out = []
    for seed in cfg.seeds:
        for run in cfg.runs:
            method, regime = run.split(":")
            out.append((f"{method}-{regime}" + (f"-s{seed}" if many else ""), method, regime, seed))
    return out


def chain_plan(ctx: Context, name: str, method: str, regime: str, seed: int) -> dict:
    """One run's chain as plain data (a worker process runs it without the profile in memory):
    train-exits -> eval-exits (VQA on val and test; captions on test) -> its simulated sweeps (val
    for the first seed only: val sets the operating points; FREE's caption sweep too)."""
    cfg, profile = _cfg(ctx), ctx.settings
    work = ctx.cache / "exits" / name
    first = seed == cfg.seeds[0]
    steps = cfg.exit_steps or profile.exits.steps
    captions = "caption" in cfg.tasks
    train = {"out": str(work), "method": method, "backbone": ctx.backbone, "regime": regime,
             "exits": profile.exits.dense, "seed": seed, "backbone_seed": ctx.seed, "steps": steps,
             "data": ctx.data, "tasks": list(cfg.tasks), "train_config": dataclasses.asdict(profile.exits)}  # fmt: skip
    # per-exit VQA on val and test; per-exit captions (the CIDEr table, first seed) on test only: the
    # report reads no val captions, and each split's captions cost a full-model caption decode per batch
    evaluate = [{"exits": str(work), "out": str(work / "eval"), "splits": ["val", "test"], "tasks": ["vqa"]}]
    if first and captions:
        evaluate.append({"exits": str(work), "out": str(work / "eval"), "splits": ["test"], "tasks": ["caption"]})
    grid = thresholds_for(_rule(method), _sparse(ctx), cfg.grid)
    sweeps = [sweep_plan(ctx, f"sim-{name}-{split}", method, work, split, "simulated", grid, seed=seed)
              for split in (("val", "test") if first else ("test",))]  # fmt: skip
    if method == "free" and first and captions:  # captions: a coarser grid, each point a CIDEr run
        cap = thresholds_for(_rule(method), _sparse(ctx), cfg.caption_grid)
        sweeps.append(sweep_plan(ctx, f"sim-{name}-test-caption", method, work, "test", "simulated", cap,
                                 seed=seed, tasks=["caption"], max_rows=cfg.caption_rows))  # fmt: skip
    outputs = ["per_exit_val.parquet", "per_exit_test.parquet"] + (
        ["per_exit_captions_test.parquet", "per_exit_caption_scores_test.parquet"] if first and captions else []
    )
    weight = CHAIN_SECONDS.get(method, CHAIN_SECONDS["other"]) + (CHAIN_SECONDS["first_seed"] if first else 0)
    return {"name": name, "work": str(work), "weight": weight,
            "train": train, "eval": evaluate,
            "eval_outputs": [str(work / "eval" / f) for f in outputs], "sweeps": sweeps}  # fmt: skip


def fitting_workers(cfg: ReproduceConfig) -> int:
    """`exit_workers`, fewer where the GPU's free memory holds fewer chains of `exit_worker_gib` each."""
    import torch

    if cfg.exit_workers <= 1 or not torch.cuda.is_available():
        return cfg.exit_workers
    free_gib = torch.cuda.mem_get_info()[0] / 2**30
    fit = max(1, int(free_gib // cfg.exit_worker_gib))
    if fit < cfg.exit_workers:
        log.warning("[exits] %d exit workers instead of %d: %.0f GiB free on the GPU", fit, cfg.exit_workers, free_gib)
    return min(cfg.exit_workers, fit)


# a chain's rough cost, so that workers take the heaviest first: seconds of a gpu-profile chain with six
# workers (the worker logs at commit 014a2ee: FREE ~90 s, distill ~55, PABEE/DeeBERT ~25; the first seed's val
# sweeps, caption sweep and per-exit captions add ~30-70 s)
CHAIN_SECONDS = {"free": 90, "distill": 55, "other": 25, "first_seed": 40}


def exits_stage(ctx: Context) -> dict:
    """Train every method x regime x seed on the dense placement, evaluate each exit on val and test,
    and run its simulated sweeps; `exit_workers` chains at a time (see `pipeline.runs`)."""
    from free_bench.pipeline.runs import run_chains

    workers = fitting_workers(_cfg(ctx))
    run_chains([chain_plan(ctx, *r) for r in run_names(ctx)], workers, ctx.cache / "exits" / "_workers")
    trained = {}
    for name, *_ in run_names(ctx):
        work = ctx.cache / "exits" / name
        dst = ctx.results / "exits" / name
        for f in [work / "manifest.json", work / "config.json", *sorted((work / "eval").glob("*.parquet"))]:
            copy_file(f, dst / f.name)
        trained[name] = round(json.loads((work / "manifest.json").read_text())["train_seconds"], 1)
    # with several workers these seconds are wall time shared with the other trainings on the device
    return {"train_seconds": trained, "exit_workers": workers}


def _sweep(ctx: Context, name: str, method: str, exits: Path, split: str, mode: str, thresholds,
           seed: int = 0, loaded=None, backbone: Callable[[], Backbone] | None = None,
           **opts) -> pd.DataFrame:  # fmt: skip
    """One sweep in the cache, resumed if it exists; its tables copied to results/<profile>/sweeps/."""
    plan = sweep_plan(ctx, name, method, exits, split, mode, thresholds, seed, **opts)
    return run_planned(plan, loaded, backbone)


def _rule(method: str) -> str:
    from free_bench.methods import get_method

    return get_method(method).rule


def _sparse(ctx: Context) -> list[int]:
    from free_bench.methods import parse_placement

    return parse_placement(ctx.settings.exits.sparse, lm_layers(ctx))


def lm_layers(ctx: Context) -> int:
    """The backbone's LM decoder depth: the profile's for embedded backbones, else the checkpoint's config."""
    if ctx.embedded:
        return ctx.settings.backbone.lm_layers
    return json.loads((ctx.cache / "backbone.done.json").read_text())["num_layers"]


def operating_points(ctx: Context, cfg: ReproduceConfig) -> dict[str, tuple[float, list[float]]]:
    """Per seed-0 run (and static): the val operating point (the cheapest threshold within max_drop of
    the full model, `analyses.robustness.calibrate`) and its grid neighbours for live decoding."""
    from analyses.robustness import calibrate

    out = {}
    live = [
        n
        for n, m, r, s in run_names(ctx)
        if s == cfg.seeds[0] and (cfg.live_runs is None or f"{m}:{r}" in cfg.live_runs)
    ]
    for name in live + ["static"]:
        sim = pd.read_parquet(ctx.cache / "sweeps" / f"sim-{name}-val" / "sweep.parquet")
        sim = sim[(sim["task"] == "vqa") & (sim["metric"] == "vqa_accuracy")]
        op = calibrate(sim, cfg.max_drop, x="expected_speedup")
        t = float(op["threshold"].iloc[0])
        points = sim[sim["method"] != "full"].groupby("threshold")["expected_speedup"].mean()
        out[name] = (t, live_grid(points, t, cfg.live_points))
    return out


def live_grid(speedups: pd.Series, t: float, n: int) -> list[float]:
    """n thresholds of the simulated grid (`speedups`: val expected speedup by threshold) around the
    operating point t, every second grid point on grids of over 20: t first, then its neighbours
    nearest first, and of two equally near the stricter (the lower expected speedup). The operating
    point is the cheapest within max_drop on val, so its cheaper neighbour usually is not, and with
    n = 2 the stricter one is the point that keeps a margin when test falls short of val."""
    grid = sorted(speedups.index)
    i = min(range(len(grid)), key=lambda j: abs(grid[j] - t))
    step = max(1, (n - 1) // 2) * (2 if len(grid) > 20 else 1)
    picks = {grid[j] for j in range(i - step * n, i + step * n + 1, step) if 0 <= j < len(grid)}
    return sorted(sorted(picks, key=lambda g: (abs(g - t), speedups[g]))[:n])


def live_runs(ctx: Context, ops: dict[str, tuple[float, list[float]]]) -> list[LiveRun]:
    """The runs with an operating point (seed 0, and static on the first run's exits), as `live_plans` reads them."""
    cfg = _cfg(ctx)
    named = {n: (m, f"{m}:{r}") for n, m, r, s in run_names(ctx) if s == cfg.seeds[0]}
    first = first_run(ctx)
    out = []
    for name, (t, live) in ops.items():
        method, run = named.get(name, ("static", "static"))
        exits = ctx.cache / "exits" / (first if name == "static" else name)
        out.append(LiveRun(name, method, run, exits, t, tuple(live)))
    return out


def first_run(ctx: Context) -> str:
    """FREE's first-seed run if it is trained, else the first run: static's exits and the deferred sweep's run."""
    cfg = _cfg(ctx)
    firsts = [(n, m) for n, m, _, s in run_names(ctx) if s == cfg.seeds[0]]
    return next((n for n, m in firsts if m == "free"), firsts[0][0])


def sweeps_stage(ctx: Context) -> dict:
    """Simulated sweeps (val and test) of every run and static exits; then the live sweeps on test of
    `pipeline.live` (batch 1 at the val operating point and its neighbours, batches compacted or not,
    speculative and caption decodes, deferred) on every live engine that can run here."""
    from free_bench.pipeline.live import live_plans

    cfg = _cfg(ctx)
    layers = _sparse(ctx)
    first = ctx.cache / "exits" / first_run(ctx)
    for plan in [chain_plan(ctx, *r) for r in run_names(ctx)]:  # finished in the exits stage: reused
        for sweep in plan["sweeps"]:
            run_planned(sweep)
    bb = shared_backbone(first)  # every sweep below on one backbone: decoders captured, shapes warmed once
    grid = thresholds_for("static", layers, cfg.grid)
    for split in ("val", "test"):
        _sweep(ctx, f"sim-static-{split}", "static", first, split, "simulated", grid, seed=cfg.seeds[0],
               backbone=bb)  # fmt: skip
    ops = operating_points(ctx, cfg)
    import torch

    # the graphs engine captures CUDA graphs: on CUDA only (a skipped engine is recorded with the reason)
    engines = [e for e in cfg.live_engines if e == "eager" or torch.cuda.is_available()]
    runs = live_runs(ctx, ops)
    deferred = next((r for r in runs if r.name == first_run(ctx)), None)  # None: the first run is not live
    plans = live_plans(ctx, runs, engines, deferred)
    load = shared_method(bb)
    for plan in plans:
        run_planned(plan, loader=load)
    return {"operating_points": {n: {"threshold": t, "live": live} for n, (t, live) in ops.items()},
            "live_engines": engines,
            "engines_skipped": {e: "needs CUDA" for e in cfg.live_engines if e not in engines},
            "live_sweeps": [p["name"] for p in plans]}  # fmt: skip


def robustness_stage(ctx: Context) -> dict:
    """Every perturbation x severity (and test_novel, and clean test), decoded live at each method's val
    operating point, gathered into results/<profile>/sweeps/robustness/."""
    from free_bench.data.perturb import PERTURBATIONS
    from free_bench.evaluation.sweep import SweepSpec, load_method

    cfg = _cfg(ctx)
    engine, skipped = robustness_engine(cfg)  # a bad name stops the stage before anything is decoded
    profile = ctx.settings
    ops = json.loads((ctx.cache / "sweeps.done.json").read_text())["operating_points"]
    names = sorted(cfg.perturbations or PERTURBATIONS)
    novel = [("test_novel", None)] if ctx.embedded else []  # a user's data has no held-out pairs
    inputs = [("test", None), *novel] + [
        ("test", f"{p}:{s}") for p in names for s in cfg.severities
    ]
    opts = {"max_rows": cfg.robustness_rows, "batch_size": cfg.robustness_batch_size,
            "compact": cfg.robustness_compact, "engine": engine}  # fmt: skip
    frames, samples, wall = [], [], {}  # wall: seconds summed over the grid's sweeps, by part
    runs = [
        (n, m) for n, m, r, s in run_names(ctx) if s == cfg.seeds[0] and f"{m}:{r}" in cfg.robustness_runs
    ]
    unplaced = [n for n, _ in runs if n not in ops]
    if unplaced:
        raise FreeBenchError(f"robustness runs {unplaced} have no operating point: add them to live_runs")
    if not runs:  # robustness_runs empty: no grid, and nothing written that the report would read as one
        return {"methods": [], "inputs": 0}
    bb = shared_backbone(ctx.cache / "exits" / runs[0][0])  # one for every method
    for name, method in runs:
        exits = ctx.cache / "exits" / name
        t = ops[name]["threshold"]
        spec = SweepSpec(method=method, exits=str(exits), split="test", mode="live", thresholds=(t,),
                         exits_at=profile.exits.sparse)  # fmt: skip
        loaded = load_method(spec, None, bb())
        for split, perturb in inputs:
            tag = f"rob/{name}/{split}-{(perturb or 'none').replace(':', '-')}"
            frames.append(
                _sweep(ctx, tag, method, exits, split, "live", [t], loaded=loaded, perturb=perturb, **opts)
            )
            samples.append(pd.read_parquet(ctx.cache / "sweeps" / tag / "samples.parquet"))
            parts = json.loads((ctx.cache / "sweeps" / tag / "manifest.json").read_text()).get("wall_s", {})
            for k, v in parts.items():
                wall[k] = wall.get(k, 0.0) + v
    dst = ctx.results / "sweeps" / "robustness"
    write_parquet(pd.concat(frames, ignore_index=True), dst / "sweep.parquet", SWEEP)
    write_parquet(pd.concat(samples, ignore_index=True), dst / "samples.parquet", SWEEP_SAMPLES)
    # no `spec` (a sweep's): the grid's rows stay apart from the batch sweeps at the same operating point
    write_json({"sweep": "robustness", "seed": cfg.seeds[0], "operating_points": ops, "inputs": len(inputs),
                "rows": cfg.robustness_rows, "batch_size": cfg.robustness_batch_size,
                "compact": cfg.robustness_compact, "engine": engine, "engine_skipped": skipped,
                "wall_s": {k: round(v, 1) for k, v in wall.items()}}, dst / "manifest.json")  # fmt: skip
    return {"methods": [n for n, _ in runs], "inputs": len(inputs), "engine": engine,
            **({"engine_skipped": skipped} if skipped else {})}


def robustness_engine(cfg: ReproduceConfig) -> tuple[str, str | None]:
    """The grid's engine, and why another was not used: the graphs engine captures CUDA graphs, so
    without CUDA the grid is decoded by the eager engine and the manifest says so."""
    import torch

    check_choice("robustness_engine", cfg.robustness_engine, ENGINES)
    if cfg.robustness_engine == "graphs" and not torch.cuda.is_available():
        return "eager", "graphs needs CUDA"
    return cfg.robustness_engine, None


def report_stage(ctx: Context) -> dict:
    """Tables, figures and REPORT.md from results/<profile>/ alone (analyses never import torch)."""
    from analyses.report import build_report

    return {"report": str(build_report(ctx.results))}
