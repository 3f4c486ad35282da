"""Batches: each batched point's measured speedup against what its own batch could save.

In a batch a layer runs for a step if any row in flight runs it, so a batch saves less than its rows'
exits say. Live sweeps record that count as `expected_batch_speedup` (each layer, check, head and KV
fill once per step if any row ran it, against the full model's steps); with the prefix priced at its
measured time (sums over the point's samples) it gives the batch's own expectation,

    expected_batch_with_prefix = full / (prefix + (full - prefix) / expected_batch_speedup),

and `measured / expected_batch_with_prefix` is judged against the target 0.9. Points are kept apart
by engine and by compaction (`compact`: "true" moves exited rows out of the batch, "false" keeps them
riding along), and `compute_compaction` says which of the two is faster per method and batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.axes
import numpy as np
import pandas as pd

from analyses.checks import require
from analyses.engine_targets import TARGET_RATIO, meets_target

SUMS = ["full_latency_ms", "latency_ms", "prefix_ms"]
COMPACT = {"true": "compacted", "false": "riding along"}


def compute_batches(
    curves: pd.DataFrame, samples: pd.DataFrame | None, keys: Sequence[str], target: float = TARGET_RATIO
) -> pd.DataFrame:
    """Per timed point of `curves` at batch size > 1 (`keys` + threshold): its measured speedup (with
    CI), `expected_speedup` (per row) and `expected_batch_speedup` (the batch's own count; NaN where
    the sweep did not record it), `prefix_share`, `expected_batch_with_prefix`,
    `measured_over_batch_expected` and `meets_target` (<NA> where the ratio cannot be computed)."""
    require(curves, list(keys) + ["threshold", "measured_speedup", "expected_speedup"], "curves")
    d = curves[(curves["timer"] != "none") & (curves["batch_size"] > 1) & ~curves["method"].isin(["full", "oracle"])]
    d = d.assign(threshold=d["threshold"].astype(float).round(9))
    if "expected_batch_speedup" not in d.columns:
        d = d.assign(expected_batch_speedup=np.nan)
    point = list(keys) + ["threshold"]
    if samples is not None and set(SUMS + point) <= set(samples.columns):
        s = samples[samples["batch_size"] > 1].dropna(subset=SUMS)
        sums = s.assign(threshold=s["threshold"].astype(float).round(9)).groupby(point, as_index=False)[SUMS].sum()
        d = d.merge(sums, on=point, how="left")
    else:
        d = d.assign(**{c: np.nan for c in SUMS})
    full, prefix = d["full_latency_ms"], d["prefix_ms"]
    d["prefix_share"] = prefix / full
    d["expected_batch_with_prefix"] = full / (prefix + (full - prefix) / d["expected_batch_speedup"])
    d["measured_over_batch_expected"] = d["measured_speedup"] / d["expected_batch_with_prefix"]
    d["meets_target"] = meets_target(d["measured_over_batch_expected"], target)
    ci = [c for c in ("measured_speedup_lo", "measured_speedup_hi", "n_samples") if c in d.columns]
    cols = point + (["compact"] if "compact" in d.columns and "compact" not in point else [])
    cols += ["value", "measured_speedup", *ci, "baseline", "expected_speedup", "expected_batch_speedup", "prefix_share",
                    "expected_batch_with_prefix", "measured_over_batch_expected", "meets_target"]  # fmt: skip
    return d[[c for c in cols if c in d.columns]].reset_index(drop=True)


def compute_compaction(batches: pd.DataFrame) -> pd.DataFrame:
    """Per method, engine, batch size and threshold decoded both compacted and riding along: each one's
    measured speedup (with CI where there is one) and `faster`: the faster of the two, "within noise"
    where their CIs overlap."""
    require(batches, ["compact", "measured_speedup", "batch_size", "method", "threshold"], "batches")
    d = batches[batches["compact"].astype(str).isin(COMPACT)]
    same = [c for c in batches.columns if c in ("method", "regime", "kv_policy", "engine", "timer", "task", "split",
                                                "perturbation", "batch_size", "threshold")]  # fmt: skip
    rows = []
    for key, g in d.groupby(same, sort=True, dropna=False):
        by = g.set_index(g["compact"].astype(str))
        if not set(COMPACT) <= set(by.index) or by.index.duplicated().any():
            continue
        c, r = by.loc["true"], by.loc["false"]
        row = dict(zip(same, key, strict=True))
        for name, x in (("compacted", c), ("riding_along", r)):
            row |= {f"{name}_speedup": x["measured_speedup"],
                    f"{name}_speedup_lo": x.get("measured_speedup_lo", np.nan),
                    f"{name}_speedup_hi": x.get("measured_speedup_hi", np.nan)}  # fmt: skip
        row["faster"] = _faster(c, r)
        rows.append(row)
    return pd.DataFrame(rows)


def _faster(c: pd.Series, r: pd.Series) -> str:
    """The faster of compacted (c) and riding along (r); "within noise" where the CIs overlap."""
    lo_c, hi_c = c.get("measured_speedup_lo", np.nan), c.get("measured_speedup_hi", np.nan)
    lo_r, hi_r = r.get("measured_speedup_lo", np.nan), r.get("measured_speedup_hi", np.nan)
    if np.isfinite([lo_c, hi_c, lo_r, hi_r]).all() and not (lo_c > hi_r or lo_r > hi_c):
        return "within noise"
    return COMPACT["true"] if c["measured_speedup"] > r["measured_speedup"] else COMPACT["false"]


def plot_batches(batches: pd.DataFrame, ax: matplotlib.axes.Axes, target: float = TARGET_RATIO):
    """Measured speedup against the batch's own expectation (prefix priced in), one marker per point: a
    colour per method, a shape per batch size, filled when compacted, open when riding along, pale where
    the sweep did not record which; with y = x and the target line y = target * x."""
    require(batches, ["expected_batch_with_prefix", "measured_speedup", "batch_size", "compact", "method"],
            "batches")  # fmt: skip
    d = batches[np.isfinite(batches["expected_batch_with_prefix"].astype(float))]
    if d.empty:
        raise ValueError("no batched point has an expected_batch_with_prefix (expected_batch_speedup unrecorded)")
    colours = {m: f"C{i}" for i, m in enumerate(sorted(d["method"].astype(str).unique()))}
    shapes = dict(zip(sorted(d["batch_size"].unique()), "osD^vP*X", strict=False))
    for _, r in d.iterrows():
        c, compact = colours[str(r["method"])], str(r["compact"]).lower()
        how = COMPACT.get(compact, "compaction not recorded")
        ax.plot(r["expected_batch_with_prefix"], r["measured_speedup"], ls="none", marker=shapes[r["batch_size"]],
                ms=7, color=c, mfc="none" if compact == "false" else c, alpha=1.0 if compact in COMPACT else 0.4,
                label=f"{r['method']} batch {r['batch_size']} {r.get('engine', '')}, {how}")  # fmt: skip
    hi = float(max(d["expected_batch_with_prefix"].max(), d["measured_speedup"].max(), 1.0)) * 1.05
    xs = np.array([0.0, hi])
    ax.plot(xs, xs, color="0.6", lw=1, label="measured = expected")
    ax.plot(xs, target * xs, color="0.2", ls="--", lw=1, label=f"target: {target:g} x expected")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("expected_batch_with_prefix (the batch's own count, prefix priced in)")
    ax.set_ylabel("measured speedup")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per label
    ax.legend(unique.values(), unique.keys(), fontsize="small")
    return ax
