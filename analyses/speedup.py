"""Accuracy vs speedup: the curves, their frontiers, the area under them and the headline table.

Input is a concatenation of `sweep.parquet` tables (one row per sweep point and metric) and, where
available, the per-sample `samples.parquet` tables, from which bootstrap CIs are drawn. The full model,
static exits and the oracle are reference points, not curves: they are plotted as markers / a ceiling
and left out of the AUC. Measured speedup is wall-clock (NaN for simulated sweeps); expected speedup
is the layer-count estimate including the exits' own cost.

`extra_keys` names columns that tell otherwise identical points apart; by default `timer` and `engine`
(where the table has them), so a simulated point (timer "none") and a live one at the same threshold
stay two points, and so do the eager and CUDA-graph engines' points: each measured speedup is against
the full model timed through its own engine, so one curve through both would mean nothing. Add e.g. a
sweep-name column when two sweeps differ in a setting the table has no column for (compaction).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.axes
import numpy as np
import pandas as pd

from analyses.bootstrap import CI_COLUMNS, bootstrap_points
from analyses.checks import require

KEYS = ["method", "regime", "kv_policy", "batch_size", "task", "split", "perturbation"]  # one curve
CURVE = KEYS + ["metric"]
SETTING = ["task", "split", "perturbation", "metric", "batch_size"]  # what the full-model row must share
MEASURES = ["value", "expected_speedup", "measured_speedup", "mean_exit_layer"]
# carried into the curves where the sweep has them (sweeps written before them lack the columns)
OPTIONAL_MEASURES = ["expected_batch_speedup", "acceptance_rate", "tokens_per_pass"]
REFERENCE = ("full", "static", "oracle")
X_LABELS = {
    "measured_speedup": "measured speedup (wall-clock)",
    "expected_speedup": "expected speedup (layer count)",
}
EXTRA_KEYS = ("timer", "engine")


def check_x(x: str) -> None:
    if x not in X_LABELS:
        raise ValueError(f"unknown speedup x={x!r}; expected one of {sorted(X_LABELS)}")


def curve_keys(df: pd.DataFrame, extra_keys: Sequence[str] = EXTRA_KEYS) -> list[str]:
    """The columns that identify one curve of `df`: CURVE plus the extra keys it has."""
    return CURVE + [k for k in extra_keys if k in df.columns]


def lookup(
    df: pd.DataFrame, ref: pd.DataFrame, on: Sequence[str], optional: Sequence[str], name: str
) -> pd.DataFrame:
    """`df` with column `name`: the mean `value` of the `ref` rows sharing `on` + `optional`, falling
    back to `on` alone where no ref row shares the optional keys (the full model's quality does not
    depend on kv policy or regime; a sweep that timed it under the same settings is still preferred)."""
    out = df.copy()
    out[name] = np.nan
    for keys in (list(on) + list(optional), list(on)):
        mean = ref.groupby(keys, dropna=False)["value"].mean().rename("_ref").reset_index()
        found = out[keys].merge(mean, on=keys, how="left")["_ref"].to_numpy()
        out[name] = out[name].fillna(pd.Series(found, index=out.index))
    return out


def collapse_points(sweep: pd.DataFrame, extra_keys: Sequence[str] = EXTRA_KEYS) -> pd.DataFrame:
    """One row per point: the mean over seeds (`n_seeds` of them) and over the full-model row that
    every sweep repeats. Any other repeated point is ambiguous and refused (see `extra_keys`)."""
    require(sweep, CURVE + ["threshold"] + MEASURES, "sweep")
    keys = curve_keys(sweep, extra_keys) + ["threshold"]
    t = sweep.assign(threshold=sweep["threshold"].astype(float).round(9))
    ids = keys + (["seed"] if "seed" in t.columns else [])
    dup = t[t.duplicated(ids, keep=False) & ~t["method"].isin(["full", "oracle"])]
    if len(dup):
        first = {k: dup.iloc[0][k] for k in ids}
        raise ValueError(f"sweep repeats {len(dup)} rows at one point, e.g. {first}; pass extra_keys")
    agg = {m: (m, "mean") for m in MEASURES} | (
        {"n_seeds": ("seed", "nunique")} if "seed" in t.columns else {}
    )
    agg |= {m: (m, "mean") for m in OPTIONAL_MEASURES if m in t.columns}
    if "n_samples" in t.columns:  # questions decoded per point (sweeps written before it lack the column)
        agg["n_samples"] = ("n_samples", "max")
    out = t.groupby(keys, as_index=False, sort=True, dropna=False).agg(**agg)
    return out if "seed" in t.columns else out.assign(n_seeds=1)


def compute_curves(
    sweep: pd.DataFrame,
    samples: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    extra_keys: Sequence[str] = EXTRA_KEYS,
    per_sample_metrics: Sequence[str] = ("vqa_accuracy",),
) -> pd.DataFrame:
    """One row per point (curve keys + threshold): the sweep's value, expected/measured speedup and
    mean exit layer, plus `*_lo/*_hi` bootstrap CIs where `samples` has the point (NaN elsewhere), and
    `n_samples`: the questions decoded for the point, as the sweep recorded it, else counted in
    `samples`, else missing (<NA>, never 0). Per-sample `value` is a mean-decomposable metric (VQA
    accuracy), so its CI is attached only to `per_sample_metrics` rows unless samples has a `metric`
    column; a corpus metric such as CIDEr keeps NaN value CIs but gets speedup CIs."""
    curves = collapse_points(sweep, extra_keys)
    recorded = curves.pop("n_samples") if "n_samples" in curves.columns else pd.Series(np.nan, index=curves.index)
    if samples is None:
        return curves.assign(**{c: np.nan for c in CI_COLUMNS}, n_samples=count_or_missing(recorded))
    require(samples, KEYS + ["threshold", "sample_id", "value", "cost_layers", "full_cost_layers"], "samples")
    samples = samples.assign(
        threshold=samples["threshold"].astype(float).round(9),
        **{c: np.nan for c in ("latency_ms", "full_latency_ms") if c not in samples.columns},
    )
    skeys = KEYS + [k for k in extra_keys if k in samples.columns and k in curves.columns]
    skeys += ["metric"] if "metric" in samples.columns else []
    boot = bootstrap_points(samples, skeys, n_boot=n_boot, seed=seed, level=level)
    out = curves.assign(_recorded=recorded.to_numpy()).merge(
        boot, on=skeys + ["threshold"], how="left", validate="many_to_one"
    )
    if "metric" not in samples.columns:
        out.loc[~out["metric"].isin(list(per_sample_metrics)), ["value_lo", "value_hi"]] = np.nan
    out["n_samples"] = count_or_missing(out.pop("_recorded").fillna(out["n_samples"]))
    return out


def count_or_missing(n: pd.Series) -> pd.Series:
    """A count column as nullable integers: <NA> where nothing counted it (never 0 for unknown)."""
    return pd.to_numeric(n, errors="coerce").round().astype("Int64")


def compute_pareto(
    curves: pd.DataFrame, x: str = "measured_speedup", extra_keys: Sequence[str] = EXTRA_KEYS
) -> pd.DataFrame:
    """The rows of each curve on its upper-right frontier: no other point of the curve is at least as
    fast and at least as good (points without a finite x are dropped). Sorted by x within a curve."""
    check_x(x)
    require(curves, CURVE + ["value", x], "curves")
    keys = curve_keys(curves, extra_keys)
    d = curves[np.isfinite(curves[x].astype(float)) & curves["value"].notna()]
    d = d.sort_values(keys + [x, "value"], ascending=[True] * len(keys) + [False, False])
    # walking from the fastest point down, a point is kept when it beats every faster point
    better = d.groupby(keys, dropna=False)["value"].transform(lambda s: s.cummax().shift(fill_value=-np.inf))
    return d[d["value"] > better].sort_values(keys + [x]).reset_index(drop=True)


def _mean_quality(xs: np.ndarray, vs: np.ndarray, lo: float, hi: float, interp: str) -> float:
    """Mean of the frontier's quality over [lo, hi]: the exact area of a piecewise-linear or step
    function divided by hi - lo; NaN when the range is empty or the frontier does not reach hi."""
    if not hi > lo or xs.max() < hi - 1e-12:
        return float("nan")
    br = np.unique(np.clip(np.concatenate([[lo, hi], xs]), lo, hi))
    if interp == "linear":
        area = np.trapezoid(np.interp(br, xs, vs), br)  # flat to the left of the slowest point
    else:  # step: quality at s is that of the slowest frontier point at least as fast as s
        q = vs[np.searchsorted(xs, (br[:-1] + br[1:]) / 2, side="left")]
        area = float(np.sum(q * np.diff(br)))
    return float(area / (hi - lo))


def compute_auc(
    curves: pd.DataFrame,
    x: str = "measured_speedup",
    x_range: tuple[float, float] | None = None,
    interp: str = "linear",
    extra_keys: Sequence[str] = EXTRA_KEYS,
) -> pd.DataFrame:
    """Per curve (reference methods excluded): the mean quality of its frontier over a speedup range
    shared by the methods it is compared with (same curve keys bar method and regime). The range is
    `x_range`, else [1, smallest of the methods' largest speedups] so that every method is defined on
    all of it. Quality between frontier points is linear (`interp="linear"`, trapezoid) or the
    achievable step (`interp="step"`: best quality at a speedup >= s), flat below the slowest point.
    `auc` is the area divided by the range width (so it reads as a mean quality); NaN when the range
    is empty (e.g. no method beats 1x) or a given x_range runs past the method's fastest point."""
    if interp not in ("linear", "step"):
        raise ValueError(f"unknown interp {interp!r}; expected 'linear' or 'step'")
    check_x(x)
    require(curves, CURVE + ["value", x], "curves")
    methods = curves[~curves["method"].isin(REFERENCE)]
    front = compute_pareto(methods, x, extra_keys) if len(methods) else methods
    if front.empty:
        raise ValueError(f"curves has no method point with a finite {x}")
    keys = curve_keys(front, extra_keys)
    compare = [k for k in keys if k not in ("method", "regime")]
    rows = []
    for cmp_key, grp in front.groupby(compare, sort=True, dropna=False):
        lo, hi = x_range if x_range is not None else (1.0, grp.groupby(["method", "regime"])[x].max().min())
        for (method, regime), g in grp.groupby(["method", "regime"], sort=True):
            auc = _mean_quality(g[x].to_numpy(float), g["value"].to_numpy(float), lo, hi, interp)
            row = dict(zip(compare, cmp_key, strict=True)) | {"method": method, "regime": regime}
            rows.append(row | {"x": x, "x_lo": lo, "x_hi": hi, "auc": auc, "n_frontier": len(g)})
    return pd.DataFrame(rows)[keys + ["x", "x_lo", "x_hi", "auc", "n_frontier"]]


def pick_at_drop(points: pd.DataFrame, keys: Sequence[str], x: str, max_drop: float) -> pd.DataFrame:
    """Per `keys` group of `points` (which carry `full_value`): the row with the largest x among those
    within `max_drop` of the full model (ties: higher value); where none is, the highest-value row
    (ties: larger x). `drop` = full_value - value; `meets_drop` says which rule chose the row."""
    d = points[np.isfinite(points[x].astype(float))].copy()
    d["drop"] = d["full_value"] - d["value"]
    d["meets_drop"] = (d["drop"] <= max_drop + 1e-12).fillna(False).astype(bool)
    d["_k1"] = np.where(d["meets_drop"], d[x], d["value"])
    d["_k2"] = np.where(d["meets_drop"], d["value"], d[x])
    d = d.sort_values(["meets_drop", "_k1", "_k2"], ascending=False)
    best = d.groupby(list(keys), sort=True, dropna=False).head(1).drop(columns=["_k1", "_k2"])
    return best.sort_values(list(keys)).reset_index(drop=True)


def best_at_drop(
    curves: pd.DataFrame,
    max_drop: float = 0.01,
    x: str = "measured_speedup",
    extra_keys: Sequence[str] = EXTRA_KEYS,
) -> pd.DataFrame:
    """The headline table: per method curve, the fastest point (by x) whose value is at most
    `max_drop` below the full model's on the same setting (task/split/perturbation/metric/batch and
    extra keys; kv policy too where the full row has it), with both speedups; flagged meets_drop=False
    (and the best-quality point given) when no point qualifies."""
    check_x(x)
    require(curves, CURVE + ["threshold"] + MEASURES, "curves")
    keys = curve_keys(curves, extra_keys)
    full = curves[curves["method"] == "full"]
    if full.empty:
        raise ValueError("curves has no full-model rows (method == 'full') to measure the drop against")
    cand = curves[~curves["method"].isin(["full", "oracle"])]
    cand = lookup(cand, full, SETTING + [k for k in keys if k not in CURVE], ["kv_policy"], "full_value")
    best = pick_at_drop(cand, keys, x, max_drop)
    if best.empty:
        raise ValueError(f"no method point has a finite {x} (simulated sweeps have no measured speedup)")
    ci = [c for c in CI_COLUMNS if c in best.columns]
    cols = keys + ["threshold", "value", "full_value", "drop", "meets_drop"]
    rest = [c for c in ("n_samples", "baseline", "own_speedup") if c in best.columns]
    return best[cols + ["expected_speedup", "measured_speedup", "mean_exit_layer"] + ci + rest]


def plot_speedup(
    curves: pd.DataFrame,
    ax: matplotlib.axes.Axes,
    x: str = "measured_speedup",
    metric: str = "vqa_accuracy",
    task: str | None = None,
) -> matplotlib.axes.Axes:
    """Quality vs speedup: a line per method (labelled by whatever else varies) with its CI band,
    static exits as square markers, the full model as a star at x=1, the oracle as a dashed ceiling."""
    check_x(x)
    require(curves, CURVE + ["value", x], "curves")
    d = curves[curves["metric"] == metric]
    if d.empty:
        raise ValueError(f"unknown metric {metric!r}; curves have {sorted(curves['metric'].unique())}")
    if task is not None:
        d = d[d["task"] == task]
        if d.empty:
            raise ValueError(f"no {metric!r} rows for task {task!r}")
    lines = d[~d["method"].isin(REFERENCE) & np.isfinite(d[x].astype(float))]
    vary = [k for k in [*KEYS[1:], "engine"] if k in lines.columns and lines[k].nunique() > 1]
    for key, g in lines.groupby(["method"] + vary, sort=True):
        g = g.sort_values(x)
        (line,) = ax.plot(g[x], g["value"], marker="o", ms=3, label=" ".join(map(str, key)))
        if "value_lo" in g.columns and g["value_lo"].notna().any():
            ax.fill_between(g[x], g["value_lo"], g["value_hi"], color=line.get_color(), alpha=0.2, lw=0)
    static = d[(d["method"] == "static") & np.isfinite(d[x].astype(float))]
    if len(static):
        ax.plot(static[x], static["value"], marker="s", ls="none", color="0.3", label="static exits")
    full = d[d["method"] == "full"]
    if len(full):
        ax.plot(
            np.ones(len(full)), full["value"], marker="*", ms=14, ls="none", color="k", label="full model"
        )
    oracle = d[d["method"] == "oracle"]
    if len(oracle):
        ax.axhline(oracle["value"].max(), ls="--", color="0.5", label="oracle")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return ax
