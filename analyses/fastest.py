"""Speedups against the fastest full model measured in the same run.

A live sweep times the full model beside every decode through its own engine, so its measured speedup
is against that engine's full model. Where one engine's full model is much slower than another's (the
eager engine launches every kernel from Python), a speedup over it flatters early exit. Here every timed
batch-1 point is also set against one baseline per question: the full model's latency on the engine
whose full model decodes that question fastest (chosen by the median of every time the run took it at
batch 1, same timer), against the point's own time for the same question. For a point on that engine
itself the baseline is the full-model time taken beside it (interleaved, so clock and load drift cancel,
as in its own measured speedup); for a point on another engine, that engine's median time for the
question. The ratio of sums over the point's questions is its speedup; its CI comes from the paired
bootstrap over questions (`analyses.bootstrap`: points on the same questions share one count matrix, so
points of two engines move together).

A speculative engine ("<engine>-speculative") times its engine's plain full model beside its decodes,
so those times count for that engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analyses.bootstrap import bootstrap_points
from analyses.checks import require
from analyses.load import LEGACY_ENGINE

QUESTION = ["timer", "task", "split", "perturbation", "sample_id"]  # one baseline per question and clock
SPECULATIVE = "-speculative"
FASTEST = "fastest full model"


def base_engine(engine: pd.Series) -> pd.Series:
    """The engine whose plain full model a row's full-model time is: "graphs" for "graphs-speculative"."""
    return engine.astype(str).str.removesuffix(SPECULATIVE)


def own_label(engine: object) -> str:
    """The `baseline` of a speedup against the full model of the point's own engine."""
    return f"own engine ({str(engine).removesuffix(SPECULATIVE)})"


def compute_fastest_full(samples: pd.DataFrame) -> pd.DataFrame:
    """Per question (timer, task, split, perturbation, sample_id): `baseline_engine`, the engine whose full
    model decodes it fastest at batch 1 (each engine's median over the times this run took it),
    `baseline_ms` that median, `n_engines` compared and `n_timings` behind the median. Untimed rows and
    batches are left out; ties go to the engine first in name order."""
    require(samples, QUESTION + ["batch_size", "engine", "full_latency_ms"], "samples")
    d = samples[(samples["batch_size"] == 1) & (samples["timer"] != "none") & samples["full_latency_ms"].notna()]
    if d.empty:
        raise ValueError("samples has no timed batch-1 row with a full-model time (full_latency_ms)")
    per = (
        d.assign(engine=base_engine(d["engine"]))
        .groupby(QUESTION + ["engine"], as_index=False, dropna=False)
        .agg(baseline_ms=("full_latency_ms", "median"), n_timings=("full_latency_ms", "size"))
    )
    per["n_engines"] = per.groupby(QUESTION, dropna=False)["engine"].transform("nunique")
    per = per.sort_values(QUESTION + ["baseline_ms", "engine"], kind="stable")
    best = per.drop_duplicates(QUESTION).rename(columns={"engine": "baseline_engine"})
    return best[QUESTION + ["baseline_engine", "baseline_ms", "n_engines", "n_timings"]].reset_index(drop=True)


def fastest_label(engines: pd.Series) -> str:
    """ "fastest full model (graphs)", or with several engines the questions each was fastest on."""
    counts = engines.astype(str).value_counts()
    if len(counts) == 1:
        return f"{FASTEST} ({counts.index[0]})"
    return f"{FASTEST} (" + ", ".join(f"{e}: {n} questions" for e, n in counts.items()) + ")"


def compute_vs_fastest(
    curves: pd.DataFrame,
    samples: pd.DataFrame,
    fastest: pd.DataFrame,
    keys: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """The timed batch-1 rows of `curves` (one per point, `keys` + threshold) with `measured_speedup`,
    its CI and `n_samples` taken against the fastest full model (`fastest`, from
    `compute_fastest_full`): sum of the baseline over the point's questions that have one / sum of the
    point's own times for them, the baseline being the full-model time taken beside the point where the
    point ran on the question's fastest engine, else that engine's median. Adds `baseline` (the label)
    and `own_speedup` (the point's speedup against its own engine's full model, as the sweep recorded
    it). Points without per-question times are left out (nothing to set against the baseline)."""
    require(samples, list(keys) + ["threshold", "sample_id", "latency_ms", "full_latency_ms", "batch_size"],
            "samples")  # fmt: skip
    s = samples[(samples["batch_size"] == 1) & samples["latency_ms"].notna()]
    s = s.assign(threshold=s["threshold"].astype(float).round(9))
    s = s.merge(fastest[QUESTION + ["baseline_engine", "baseline_ms"]], on=QUESTION, how="inner")
    if s.empty:
        raise ValueError("no timed batch-1 sample has a fastest-full-model baseline for its question")
    beside = (base_engine(s["engine"]) == s["baseline_engine"]) & s["full_latency_ms"].notna()
    s["baseline_ms"] = s["full_latency_ms"].where(beside, s["baseline_ms"])
    point = list(keys) + ["threshold"]
    boot = bootstrap_points(s.assign(full_latency_ms=s["baseline_ms"]), list(keys), n_boot=n_boot, seed=seed)
    sums = s.groupby(point, as_index=False, dropna=False).agg(
        _base=("baseline_ms", "sum"), _own=("latency_ms", "sum"), n_samples=("sample_id", "nunique"),
        baseline=("baseline_engine", fastest_label),
    )  # fmt: skip
    sums["measured_speedup"] = sums["_base"] / sums["_own"]
    ci = boot[point + ["measured_speedup_lo", "measured_speedup_hi"]]
    vs = sums.drop(columns=["_base", "_own"]).merge(ci, on=point, how="left")
    timed = curves[(curves["timer"] != "none") & (curves["batch_size"] == 1)]
    timed = timed.assign(threshold=timed["threshold"].astype(float).round(9), own_speedup=timed["measured_speedup"])
    drop = ["measured_speedup", "measured_speedup_lo", "measured_speedup_hi", "n_samples", "baseline"]
    out = timed.drop(columns=[c for c in drop if c in timed.columns]).merge(vs, on=point, how="inner")
    return out.reset_index(drop=True)


def label_own(best: pd.DataFrame) -> pd.DataFrame:
    """`best` (own-engine speedups) with its `baseline` named: "own engine (eager)"; simulated rows none."""
    timed = best["timer"] != "none" if "timer" in best.columns else pd.Series(True, index=best.index)
    engine = best["engine"] if "engine" in best.columns else pd.Series(LEGACY_ENGINE, index=best.index)
    label = np.where(timed, [own_label(e) for e in engine], "none (layer count)")
    return best.assign(baseline=label)
