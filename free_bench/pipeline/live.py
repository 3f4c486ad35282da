"""The live sweeps of reproduce's sweeps stage as plain data: what each live run decodes, on which
engine, at which batch size and how, under a folder name that says so.

Per live run (seed 0) and static, on every live engine that can run here (the graphs engine's folders
carry `-graphs`; `batch_engines` and `speculative_engines` narrow the batched and speculative sweeps to some):

- `live-<run>-b1[-graphs]`: batch 1 at the val operating point and its neighbours (`live_points`);
- `live-<run>-b<B>-compact[-graphs]`, `live-<run>-b<B>-no-compact[-graphs]`: each of `batch_sizes` at the
  operating point on max(live_rows, 4 B) rows, finished rows compacted out or riding along, so which of the
  two a device runs faster is measured for every method;
- speculative runs: `live-<run>-b1[-graphs]-speculative` (VQA, the batch-1 thresholds and rows: its lossy
  twin is `live-<run>-b1[-graphs]`) and, where captions are a task, `...-speculative-caption` beside its
  lossy twin `live-<run>-b1[-graphs]-caption` (`caption_rows` test images);

and `live-<run>-b1-deferred` (eager) for the first run. Plans are grouped by run, so a stage can keep one
run's loaded exits (and the decoders captured on them) for all of its sweeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from free_bench.config import ENGINES, METHODS, REGIMES, TASKS, ReproduceConfig
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.pipeline.context import Context
from free_bench.pipeline.plans import plan_spec, sweep_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveRun:
    """A run decoded live: its folder tag, exit method, run spec, exits and val thresholds."""

    name: str  # free-semi (free-semi-s0 where seeds vary), or static
    method: str
    run: str  # "method:regime" as ReproduceConfig names runs, or "static"
    exits: Path  # static: the first run's (its backbone and layers)
    threshold: float  # the val operating point
    live: tuple[float, ...]  # the batch-1 live thresholds: the operating point and its neighbours


def speculative_names(cfg: ReproduceConfig, runs: list[LiveRun]) -> list[str]:
    """The live runs decoded speculatively. An entry of `speculative_runs` must be "static" or
    "method:regime"; one naming a run this configuration does not train is skipped (as robustness_runs
    and calibration_runs are, so a settings file with fewer runs keeps its profile's lists); one naming a
    trained run that is not decoded live is an error (it has no thresholds to decode at)."""
    if cfg.speculative_runs is None:
        return [r.name for r in runs]
    for entry in cfg.speculative_runs:
        if entry != "static":
            method, _, regime = entry.partition(":")
            check_choice("speculative_runs method", method, METHODS)
            check_choice("speculative_runs regime", regime, REGIMES)
    live = {r.run: r.name for r in runs}
    unplaced = sorted(e for e in cfg.speculative_runs if e in cfg.runs and e not in live)
    if unplaced:
        raise FreeBenchError(f"speculative runs {unplaced} are not decoded live: add them to live_runs")
    skipped = sorted(set(cfg.speculative_runs) - set(live))
    if skipped:
        log.info("[sweeps] speculative runs %s are not trained in this configuration: skipped", skipped)
    return [live[e] for e in live if e in cfg.speculative_runs]


def live_plans(ctx: Context, runs: list[LiveRun], engines: list[str], deferred: LiveRun | None) -> list[dict]:
    """Every live sweep of the stage (see the module's docstring), each spec checked before any runs."""
    cfg = ctx.settings.reproduce
    for task in cfg.speculative_tasks:
        check_choice("speculative_tasks", task, TASKS)
    for field in ("batch_engines", "speculative_engines"):
        for engine in getattr(cfg, field) or ():
            check_choice(field, engine, ENGINES)
    speculative = set(speculative_names(cfg, runs))
    plans = []
    for run in runs:
        for engine in engines:
            plans += _run_plans(ctx, run, engine, run.name in speculative)
        if deferred is not None and run.name == deferred.name:
            plans.append(sweep_plan(ctx, f"live-{run.name}-b1-deferred", run.method, run.exits, "test", "live",
                                    [run.threshold], kv_policy="deferred", max_rows=cfg.live_rows))  # fmt: skip
    for p in plans:  # a bad setting (a batch size of 0, draft_len 0) stops the stage before any decoding
        plan_spec(p).check()
    return plans


def _run_plans(ctx: Context, run: LiveRun, engine: str, speculative: bool) -> list[dict]:
    """One run's sweeps on one engine: batch 1, the batch sizes, and its speculative decodes."""
    cfg = ctx.settings.reproduce
    tag = "" if engine == "eager" else f"-{engine}"

    def plan(suffix: str, thresholds, **opts) -> dict:
        return sweep_plan(ctx, f"live-{run.name}-{suffix}", run.method, run.exits, "test", "live", thresholds,
                          engine=engine, **opts)  # fmt: skip

    plans = [plan(f"b1{tag}", run.live, max_rows=cfg.live_rows)]
    for b in cfg.batch_sizes if cfg.batch_engines is None or engine in cfg.batch_engines else ():
        for compact in (True, False):
            plans.append(plan(f"b{b}-{'compact' if compact else 'no-compact'}{tag}", [run.threshold],
                              batch_size=b, compact=compact, max_rows=max(cfg.live_rows, 4 * b)))  # fmt: skip
    if not speculative or (cfg.speculative_engines is not None and engine not in cfg.speculative_engines):
        return plans
    drafts = {"decode": "speculative", "draft_len": cfg.draft_len}
    if "vqa" in cfg.speculative_tasks:
        plans.append(plan(f"b1{tag}-speculative", run.live, max_rows=cfg.live_rows, **drafts))
    if "caption" in cfg.tasks and "caption" in cfg.speculative_tasks:  # lossless captions, their lossy twin
        caption = {"tasks": ["caption"], "max_rows": cfg.caption_rows}
        plans.append(plan(f"b1{tag}-speculative-caption", run.live, **caption, **drafts))
        plans.append(plan(f"b1{tag}-caption", run.live, **caption))
    return plans
