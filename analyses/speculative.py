"""Self-speculative decoding: the exits draft, one full-depth pass verifies, so the answers are the full
model's (lossless). Its live rows have an engine ending in "-speculative" (`analyses.load`). Each is set
beside the lossy live point of the same method, engine, task and threshold: what the lossy decode gains
in speed and loses in quality, against what the lossless one gains for nothing.

The target: FREE at least 1.5x faster than the full model, lossless, on captions at batch 1. It holds
when the whole CI of FREE's fastest such point is at or above 1.5x, else it does not; with no FREE
caption row decoded speculatively it is not measured.
"""

from __future__ import annotations

import matplotlib.axes
import numpy as np
import pandas as pd

from analyses.checks import require
from analyses.fastest import FASTEST, SPECULATIVE
from analyses.fmt import ci, finite
from analyses.speedup import SETTING, lookup

TARGET_LOSSLESS = 1.5
SAME = ["method", "regime", "kv_policy", "batch_size", "task", "split", "perturbation", "metric", "timer",
        "threshold", "baseline"]  # fmt: skip
SPEED = ["measured_speedup", "measured_speedup_lo", "measured_speedup_hi"]


def compute_speculative(curves: pd.DataFrame) -> pd.DataFrame:
    """Per speculative point of `curves` (engine "<engine>-speculative"; `baseline` says against which
    full model its speedup is): acceptance_rate, tokens_per_pass, value, measured speedup (CI),
    n_samples, and the lossy point of the same method, engine, task, threshold and baseline: its
    `lossy_speedup` (CI), `lossy_value` and `lossy_drop` (its full model's quality minus its own)."""
    require(curves, ["engine", "threshold", "value", *SPEED[:1], *SAME[:-1]], "curves")
    d = curves.assign(threshold=curves["threshold"].astype(float).round(9))
    if "baseline" not in d.columns:
        d = d.assign(baseline="own engine")
    spec = d[d["engine"].astype(str).str.endswith(SPECULATIVE) & (d["method"] != "full")]
    if spec.empty:
        raise ValueError("no live point decoded speculatively (engine '<engine>-speculative')")
    spec = spec.assign(lossy_engine=spec["engine"].astype(str).str.removesuffix(SPECULATIVE))
    lossy = d[~d["engine"].astype(str).str.endswith(SPECULATIVE)]
    full = lossy[lossy["method"] == "full"]
    lossy = lossy[lossy["method"] != "full"]
    if len(lossy) and len(full):
        lossy = lookup(lossy, full, SETTING + ["timer", "engine"], ["kv_policy"], "full_value")
    else:
        lossy = lossy.assign(full_value=np.nan)
    lossy = lossy.assign(lossy_drop=lossy["full_value"] - lossy["value"])
    right = lossy[SAME + ["engine", "value", "lossy_drop"] + [c for c in SPEED if c in lossy.columns]]
    right = right.rename(columns={"engine": "lossy_engine", "value": "lossy_value",
                                  **{c: c.replace("measured_speedup", "lossy_speedup") for c in SPEED}})  # fmt: skip
    out = spec.merge(right, on=SAME + ["lossy_engine"], how="left")
    for c in ("acceptance_rate", "tokens_per_pass", "n_samples", *SPEED[1:],
              *[c.replace("measured_speedup", "lossy_speedup") for c in SPEED]):  # fmt: skip
        if c not in out.columns:
            out[c] = np.nan
    cols = SAME + ["engine", "acceptance_rate", "tokens_per_pass", "value", *SPEED, "n_samples", "lossy_engine",
                   "lossy_value", "lossy_drop", "lossy_speedup", "lossy_speedup_lo", "lossy_speedup_hi"]  # fmt: skip
    return out[cols].reset_index(drop=True)


def verdict_speculative(spec: pd.DataFrame | None, missing: str | None = None,
                        target: float = TARGET_LOSSLESS) -> tuple[str, str]:  # fmt: skip
    """"FREE >= 1.5x lossless on captions (batch 1)": (verdict, sentence) from `compute_speculative`.
    Against the fastest full model where the table has that baseline, else each engine's own."""
    rows = pd.DataFrame() if spec is None or spec.empty else spec
    if len(rows):
        rows = rows[(rows["method"] == "free") & (rows["task"] == "caption") & (rows["batch_size"] == 1)]
        rows = rows[np.isfinite(rows["measured_speedup"].astype(float))]
    if rows.empty:
        why = missing or "no FREE caption point decoded speculatively at batch 1"
        return "not measured", f"No lossless FREE caption speedup: {why}."
    fastest = rows[rows["baseline"].astype(str).str.startswith(FASTEST)]
    rows = fastest if len(fastest) else rows
    r = rows.loc[rows["measured_speedup"].astype(float).idxmax()]
    lo = r.get("measured_speedup_lo")
    bound = lo if finite(lo) else float(r["measured_speedup"])
    verdict = "holds" if bound >= target else "does not hold"
    how = "" if finite(lo) else " (no CI: no per-sample data, so the point itself is judged)"
    return verdict, (
        f"FREE's fastest lossless caption point at batch 1 is {ci(r, 'measured_speedup', 'x')} against the "
        f"{r['baseline']} ({r['engine']}, threshold {r['threshold']:g}, acceptance rate {_num(r['acceptance_rate'])}, "
        f"{_num(r['tokens_per_pass'])} tokens per pass){how}. Target: >= {target:g}x, the whole CI at or above it."
    )


def _num(v: object) -> str:
    return f"{float(v):.2f}" if finite(v) else "n/a"


def plot_speculative(spec: pd.DataFrame, ax: matplotlib.axes.Axes):
    """Measured speedup (with its CI where there is one) against threshold: lossless (speculative, solid)
    and the lossy early exit of the same engine (dashed), per method, engine and task."""
    require(spec, ["method", "engine", "lossy_engine", "task", "threshold", *SPEED, "lossy_speedup"], "speculative")
    for i, ((method, engine, task), g) in enumerate(spec.groupby(["method", "engine", "task"], sort=True)):
        g = g.sort_values("threshold")
        err = np.abs(g[SPEED[1:]].to_numpy(float).T - g["measured_speedup"].to_numpy(float))  # (2, n)
        ax.errorbar(g["threshold"], g["measured_speedup"], yerr=np.nan_to_num(err), marker="o", capsize=3,
                    color=f"C{i}", label=f"{method} {task}, {engine} (lossless)")  # fmt: skip
        ax.plot(g["threshold"], g["lossy_speedup"], marker="x", ls="--", color=f"C{i}",
                label=f"{method} {task}, {g['lossy_engine'].iloc[0]} (lossy)")  # fmt: skip
    ax.axhline(TARGET_LOSSLESS, color="0.3", ls=":", lw=1, label=f"target {TARGET_LOSSLESS:g}x (captions)")
    ax.set_xlabel("threshold")
    ax.set_ylabel("measured speedup")
    ax.legend(fontsize="small")
    return ax
