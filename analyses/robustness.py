"""Robustness at a fixed operating point: each method's threshold is calibrated once on clean val
(the fastest threshold within `max_drop` of the full model), then held fixed on clean test, on every
perturbation x severity of test and on test_novel. A method whose exits are confidently wrong under a
shift shows it here as a quality drop at an unchanged (or even higher) speedup.

Perturbations are written "NAME:SEVERITY" (e.g. "gaussian_noise:3") or "none" for clean input.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.axes
import numpy as np
import pandas as pd
import seaborn as sns

from analyses.speedup import MEASURES, check_x, lookup, pick_at_drop, require

CAL = ["method", "regime", "task", "metric"]  # one operating point per these
SWEEP = CAL + ["kv_policy", "batch_size", "split", "perturbation", "threshold"] + MEASURES


def parse_perturbation(perturbation: str) -> tuple[str, int]:
    """("none", 0) for clean input, (NAME, SEVERITY) for "NAME:SEVERITY"; anything else is refused."""
    if perturbation == "none":
        return "none", 0
    name, sep, severity = str(perturbation).rpartition(":")
    if not sep or not name or not severity.strip().isdigit():
        raise ValueError(f"perturbation {perturbation!r} is neither 'none' nor 'NAME:SEVERITY'")
    return name, int(severity)


def calibrate(sweep: pd.DataFrame, max_drop: float = 0.01, x: str = "expected_speedup") -> pd.DataFrame:
    """Per (method, regime, task, metric): the threshold chosen on clean val rows, the fastest (by x)
    whose value >= full(val) - max_drop, or, when none is, the highest-value one with meets_drop=False.
    Rows repeated over seeds (or sweeps) at one threshold are averaged first. Columns: CAL, threshold,
    value, full_value, drop, meets_drop, expected_speedup, measured_speedup, mean_exit_layer."""
    check_x(x)
    require(sweep, SWEEP, "sweep")
    clean = sweep[(sweep["split"] == "val") & (sweep["perturbation"] == "none")]
    if clean.empty:
        raise ValueError(
            "sweep has no clean val rows (split == 'val', perturbation == 'none') to calibrate on"
        )
    points = clean.groupby(CAL + ["threshold"], as_index=False, sort=True)[MEASURES].mean()
    full = points[points["method"] == "full"]
    cand = lookup(
        points[~points["method"].isin(["full", "oracle"])], full, ["task", "metric"], [], "full_value"
    )
    missing = cand.loc[cand["full_value"].isna(), ["task", "metric"]].drop_duplicates()
    if len(missing):
        raise ValueError(f"no full-model clean val row for (task, metric) {missing.values.tolist()}")
    best = pick_at_drop(cand, CAL, x, max_drop)
    return best[CAL + ["threshold", "value", "full_value", "drop", "meets_drop"] + MEASURES[1:]]


def compute_robustness(
    sweep: pd.DataFrame, operating: pd.DataFrame, tol: float = 1e-6, exclude_splits: Sequence[str] = ("val",)
) -> pd.DataFrame:
    """Sweep rows at each method's calibrated threshold (|threshold - operating| <= tol) on every
    split and perturbation present except `exclude_splits`, averaged over seeds. `perturbation` is the
    name ("none" when clean) and `severity` its level (0 when clean). `drop_vs_clean` is the method's
    clean-test value minus this value; `full_value` / `drop_vs_full` compare with the full model on
    the same split and perturbation (same batch size and kv policy where the sweep has that row)."""
    require(sweep, SWEEP, "sweep")
    require(operating, CAL + ["threshold"], "operating")
    rows = sweep[~sweep["split"].isin(list(exclude_splits))]
    at = rows.merge(operating[CAL + ["threshold"]].rename(columns={"threshold": "_op"}), on=CAL)
    at = at[np.isclose(at["threshold"].astype(float), at["_op"].astype(float), rtol=0.0, atol=tol)]
    if at.empty:
        raise ValueError("sweep has no rows at the operating thresholds (outside the excluded splits)")
    keys = CAL + ["kv_policy", "batch_size", "split", "perturbation"]
    out = at.groupby(keys, as_index=False, sort=True).agg(
        threshold=("_op", "first"), **{m: (m, "mean") for m in MEASURES}
    )
    clean = out[(out["split"] == "test") & (out["perturbation"] == "none")]
    out = lookup(out, clean, CAL, ["kv_policy", "batch_size"], "clean_value")
    full = rows[rows["method"] == "full"]
    out = lookup(
        out, full, ["task", "metric", "split", "perturbation"], ["batch_size", "kv_policy"], "full_value"
    )
    out["drop_vs_clean"] = out["clean_value"] - out["value"]
    out["drop_vs_full"] = out["full_value"] - out["value"]
    parsed = [parse_perturbation(p) for p in out["perturbation"]]
    out["perturbation"] = [p[0] for p in parsed]
    out["severity"] = np.array([p[1] for p in parsed], dtype=int)
    cols = CAL + ["split", "perturbation", "severity", "kv_policy", "batch_size", "threshold", "value"]
    cols += ["clean_value", "drop_vs_clean", "full_value", "drop_vs_full"] + MEASURES[1:]
    return out[cols].sort_values(CAL + ["split", "perturbation", "severity"]).reset_index(drop=True)


def plot_robustness_heatmap(
    robust: pd.DataFrame,
    ax: matplotlib.axes.Axes,
    value: str = "value",
    method: str | None = None,
    severity: int | None = None,
    metric: str | None = None,
) -> matplotlib.axes.Axes:
    """Annotated heat map of `value`. With one method (given, or the only one present): perturbation
    rows x severity columns, with the clean-test value as a severity-0 column in every row so the
    degradation reads left to right. With several methods and no `method`: method rows x perturbation
    columns at one `severity` (default the highest present), which compares methods at a glance.
    test_novel has no severity and stays in the table only."""
    require(robust, CAL + ["split", "perturbation", "severity", value], "robust")
    if metric is None and robust["metric"].nunique() > 1:
        raise ValueError(f"robust has several metrics {sorted(robust['metric'].unique())}; pass metric=")
    d = robust if metric is None else robust[robust["metric"] == metric]
    if d.empty:
        raise ValueError(f"unknown metric {metric!r}; robust has {sorted(robust['metric'].unique())}")
    if method is not None and method not in set(d["method"]):
        raise ValueError(f"unknown method {method!r}; robust has {sorted(d['method'].unique())}")
    if method is None and d["method"].nunique() == 1:
        method = d["method"].iloc[0]
    test = d[d["split"] == "test"]
    if method is not None:
        m = test[test["method"] == method]
        if m["regime"].nunique() > 1:
            raise ValueError(
                f"method {method!r} has several regimes {sorted(m['regime'].unique())}; filter robust"
            )
        grid = m[m["severity"] > 0].pivot_table(index="perturbation", columns="severity", values=value)
        clean = m.loc[m["severity"] == 0, value]
        if len(clean):
            grid.insert(0, 0, clean.mean())
        title = f"{method}: {value} (severity 0 = clean test)"
    else:
        perturbed = test[test["severity"] > 0]
        if perturbed.empty:
            raise ValueError("robust has no perturbed test rows to draw")
        severity = int(perturbed["severity"].max()) if severity is None else severity
        at = perturbed[perturbed["severity"] == severity]
        if at.empty:
            raise ValueError(
                f"no rows at severity {severity}; robust has {sorted(perturbed['severity'].unique())}"
            )
        label = at["method"] + (
            " (" + at["regime"] + ")" if at.groupby("method")["regime"].nunique().max() > 1 else ""
        )
        grid = at.assign(method=label).pivot_table(index="method", columns="perturbation", values=value)
        title = f"{value} at severity {severity}"
    if grid.empty:
        raise ValueError(f"nothing to draw for method {method!r}")
    sns.heatmap(grid, ax=ax, annot=True, fmt=".3g", cmap="viridis", cbar=True)
    ax.set_title(title)
    return ax
