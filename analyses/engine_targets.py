"""The engines' targets: how much of the layer-count saving the clock sees, per timed point.

Two ratios from `analyses.fixed_cost`, each against the target 0.9:
- `measured_over_expected_with_prefix`: the measured speedup over the expected one with the prefix
  (vision tower, Q-Former, projection) priced at its measured time: the whole decode;
- `lm_measured_over_expected`: the decode phase alone, (full - prefix) / (early - prefix), over the
  layer-count expectation.
A point meets a target when its ratio is at least 0.9; a ratio that could not be computed meets nothing
and is counted apart (never as a pass or a fail).
"""

from __future__ import annotations

import matplotlib.axes
import numpy as np
import pandas as pd

from analyses.checks import require

TARGET_RATIO = 0.9
TARGETS = {  # ratio column -> what the report calls it
    "measured_over_expected_with_prefix": "measured / expected_with_prefix",
    "lm_measured_over_expected": "decode phase: lm_measured / expected",
}
POINT = ["method", "regime", "kv_policy", "threshold"]  # what names a point within an engine and batch


def meets_target(ratio: pd.Series, target: float = TARGET_RATIO) -> pd.Series:
    """True where `ratio` >= target, False below, <NA> where the ratio is missing."""
    r = pd.to_numeric(ratio, errors="coerce").astype(float)
    out = pd.Series(r >= target - 1e-12, index=ratio.index, dtype="boolean")
    return out.mask(~np.isfinite(r))


def point_label(row: pd.Series) -> str:
    """ "free-semi propagate t=0.72" (the regime left out where there is none)."""
    who = row["method"] if row.get("regime", "none") in ("none", None) else f"{row['method']}-{row['regime']}"
    return f"{who} {row.get('kv_policy', '')} t={float(row['threshold']):g}".replace("  ", " ")


def compute_engine_targets(fixed: pd.DataFrame, target: float = TARGET_RATIO) -> pd.DataFrame:
    """`fixed` (`compute_fixed_share`, one row per timed point) with `meets_with_prefix` and
    `meets_decode_phase`: whether each of the two ratios reaches `target`."""
    require(fixed, POINT + ["engine", "batch_size", *TARGETS], "fixed-share table")
    return fixed.assign(
        meets_with_prefix=meets_target(fixed["measured_over_expected_with_prefix"], target),
        meets_decode_phase=meets_target(fixed["lm_measured_over_expected"], target),
    ).reset_index(drop=True)


def _worst(g: pd.DataFrame, col: str) -> str:
    r = g[col].astype(float)
    if not np.isfinite(r).any():
        return "n/a"
    row = g.loc[r.idxmin()]
    return f"{point_label(row)}: {row[col]:.3f}"


def compute_engine_target_summary(targets: pd.DataFrame) -> pd.DataFrame:
    """Per engine and batch size: the points, how many meet each target (of those with a ratio), and
    the worst point for each ratio."""
    require(targets, ["engine", "batch_size", "meets_with_prefix", "meets_decode_phase", *TARGETS], "targets")
    rows = []
    for (engine, batch), g in targets.groupby(["engine", "batch_size"], sort=True):
        row = {"engine": engine, "batch_size": batch, "points": len(g)}
        for short, col, meets in (("with_prefix", "measured_over_expected_with_prefix", "meets_with_prefix"),
                                  ("decode_phase", "lm_measured_over_expected", "meets_decode_phase")):  # fmt: skip
            ok = g[meets].dropna()
            row[f"meet_{short}"] = f"{int(ok.sum())} of {len(ok)}"
            row[f"worst_{short}"] = _worst(g, col)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_engine_targets(targets: pd.DataFrame, ax: matplotlib.axes.Axes, target: float = TARGET_RATIO):
    """Each timed point: the whole decode's ratio (x) against the decode phase's (y), one colour per
    engine and one marker per batch size, with the target on both axes."""
    require(targets, ["engine", "batch_size", *TARGETS], "targets")
    markers = dict(zip(sorted(targets["batch_size"].unique()), "osD^vP*X", strict=False))
    colours = {e: f"C{i}" for i, e in enumerate(sorted(targets["engine"].astype(str).unique()))}
    for (engine, batch), g in targets.groupby(["engine", "batch_size"], sort=True):
        ax.plot(g["measured_over_expected_with_prefix"], g["lm_measured_over_expected"], ls="none",
                marker=markers.get(batch, "o"), color=colours[str(engine)], alpha=0.8,
                label=f"{engine}, batch {batch}")  # fmt: skip
    ax.axvline(target, color="0.3", ls="--", lw=1)
    ax.axhline(target, color="0.3", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("measured / expected_with_prefix (whole decode)")
    ax.set_ylabel("lm_measured / expected (decode phase)")
    ax.legend(fontsize="small")
    return ax
