"""The report's speed parts beyond the curves: speedups against the fastest full model, batches,
speculative decoding, the engine targets and the summary's best points. Each reads what `_speedup` in
`analyses.report` computed (the curves and the per-sample tables) and marks itself missing, with the
reason, where its inputs are absent."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analyses import figures
from analyses.batches import compute_batches, compute_compaction, plot_batches
from analyses.built import MAX_DROP, Built, clean_test
from analyses.engine_targets import compute_engine_target_summary, compute_engine_targets, plot_engine_targets
from analyses.fastest import compute_fastest_full, compute_vs_fastest, label_own
from analyses.speculative import compute_speculative, plot_speculative
from analyses.speedup import CURVE, KEYS, best_at_drop
from analyses.summary import compute_best_points

MAIN_METRICS = ("vqa_accuracy", "CIDEr")  # the metric a task's speedup rows are judged on


def vs_fastest_part(b: Built, curves: pd.DataFrame, samples: pd.DataFrame | None, raw: pd.DataFrame | None,
                    keys: Sequence[str], devices: dict[str, str]) -> None:  # fmt: skip
    """Timed batch-1 points against the fastest full model: the per-question baseline, the curves, and
    their best points appended to `speedup_best_measured` (its `baseline` column tells them apart).
    `samples` has one copy of the full model's samples per point, `raw` every full-model time; `keys`
    are the curves' extra keys (`analyses.report.extra_keys_for`)."""
    if "speedup_best_measured" in b.tables:
        b.tables["speedup_best_measured"] = label_own(b.tables["speedup_best_measured"])
    if samples is None or raw is None:
        b.missing["speedup_vs_fastest"] = "no per-sample tables (samples.parquet): no per-question times"
        return
    fastest = compute_fastest_full(raw)
    point = [k for k in [*KEYS, *keys] if k in samples.columns and k in curves.columns]
    vs = compute_vs_fastest(curves, samples, fastest, point, n_boot=b.n_boot, seed=b.seed)
    b.tables["speedup_fastest_baseline"], b.tables["speedup_curves_vs_fastest"] = fastest, vs
    best = best_at_drop(vs, MAX_DROP, "measured_speedup", list(keys))
    own = b.tables.get("speedup_best_measured")
    b.tables["speedup_best_measured"] = pd.concat([own, best], ignore_index=True) if own is not None else best
    b.figures |= figures.vs_fastest_figures(vs, b.res.root / "figures", b.res.profile, devices)


def batches_part(b: Built, samples: pd.DataFrame | None, keys: Sequence[str]) -> None:
    curves = b.tables.get("speedup_curves")
    if curves is None:
        return
    d = clean_test(curves)
    d = d[d["metric"].isin(MAIN_METRICS)]
    if not ((d["timer"] != "none") & (d["batch_size"] > 1)).any():
        b.missing["batches"] = "no timed sweep at a batch size above 1"
        return
    if "compact" not in d.columns and b.res.sweep is not None and "compact" in b.res.sweep.columns:
        d = _with_compact(d, b.res.sweep)
    batches = compute_batches(d, samples, [k for k in [*KEYS, *keys] if k in d.columns])
    b.tables["batches"] = batches
    compaction = compute_compaction(batches)
    if len(compaction):
        b.tables["batches_compaction"] = compaction
    if "expected_batch_speedup" not in curves.columns or not np.isfinite(batches["expected_batch_speedup"]).any():
        b.missing["batches_expected"] = (
            "these sweeps did not record `expected_batch_speedup` (the batch's own layer count), so the batches "
            "have no batch expectation to meet"
        )
        return
    title = f"{b.res.profile}: batched points, measured vs the batch's own expected speedup (prefix priced in)"
    draw = figures.titled(plot_batches, batches, title)
    b.figures["batches"] = figures.save_figure(b.res.root / "figures", "batches", draw)[0]


def _with_compact(curves: pd.DataFrame, sweep: pd.DataFrame) -> pd.DataFrame:
    """`curves` with the sweeps' `compact` (one per point where the curves' keys did not need it)."""
    on = [k for k in curves.columns if k in sweep.columns and k in (*CURVE, "timer", "engine")] + ["threshold"]
    comp = sweep.assign(threshold=sweep["threshold"].astype(float).round(9))[on + ["compact"]].drop_duplicates(on)
    return curves.assign(threshold=curves["threshold"].astype(float).round(9)).merge(comp, on=on, how="left")


def speculative_part(b: Built) -> None:
    curves = b.tables.get("speedup_curves")
    if curves is None:
        return
    if not curves["engine"].astype(str).str.endswith("-speculative").any():
        b.missing["speculative"] = "no live sweep decoded speculatively (`free-bench sweep --decode speculative`)"
        return
    own = label_own(curves[curves["timer"] != "none"])
    vs = b.tables.get("speedup_curves_vs_fastest")
    both = pd.concat([own, vs], ignore_index=True) if vs is not None else own
    spec = compute_speculative(both[both["metric"].isin(MAIN_METRICS)])
    b.tables["speculative"] = spec
    shown = spec[spec["baseline"].astype(str).str.startswith("fastest")] if vs is not None else spec
    title = f"{b.res.profile}: lossless (speculative) against lossy early exit, measured speedup"
    draw = figures.titled(plot_speculative, shown if len(shown) else spec, title)
    b.figures["speculative"] = figures.save_figure(b.res.root / "figures", "speculative", draw)[0]


def engine_targets_part(b: Built) -> None:
    fixed = b.tables.get("speedup_fixed_share")
    if fixed is None or fixed.empty:
        b.missing["engine_targets"] = "no timed point with its prefix timed (samples.parquet `prefix_ms`)"
        return
    targets = compute_engine_targets(clean_test(fixed))
    b.tables["engine_targets"] = targets
    b.tables["engine_targets_summary"] = compute_engine_target_summary(targets)
    title = f"{b.res.profile}: every timed point on clean test against the 0.9 targets"
    draw = figures.titled(plot_engine_targets, targets, title)
    b.figures["engine_targets"] = figures.save_figure(b.res.root / "figures", "engine_targets", draw)[0]


def summary_part(b: Built) -> None:
    b.tables["summary_best_points"] = compute_best_points(
        b.tables.get("speedup_best_measured"), b.tables.get("speedup_best_expected"), MAX_DROP
    )
