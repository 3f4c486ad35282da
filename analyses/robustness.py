"""Robustness at a fixed operating point: each method's threshold is calibrated once on clean val
(the fastest threshold within `max_drop` of the full model), then held fixed on clean test, on every
perturbation x severity of test and on test_novel. A method whose exits are confidently wrong under a
shift shows it here as a quality drop at an unchanged (or even higher) speedup.

Perturbations are written "NAME:SEVERITY" (e.g. "gaussian_noise:3") or "none" for clean input.

`compute_robustness` works on the sweep tables (means only); `compute_robustness_ci` works on the
per-sample tables and gives the drop under shift, and each baseline's drop minus FREE's, bootstrap CIs.

Where the rows hold live points of several decode engines (`engine`: eager, graphs), `calibrate` and
`compute_robustness` keep them apart (one operating point per engine), since a measured speedup is only
comparable within its engine; `compute_robustness_ci` refuses them, so pass one engine's rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.axes
import numpy as np
import pandas as pd
import seaborn as sns

from analyses.bootstrap import percentile_interval, sample_counts
from analyses.checks import require
from analyses.speedup import MEASURES, check_x, lookup, pick_at_drop

CAL = ["method", "regime", "task", "metric"]  # one operating point per these
SWEEP = CAL + ["kv_policy", "batch_size", "split", "perturbation", "threshold"] + MEASURES
UNIT = ["method", "regime", "task"]  # one row of compute_robustness_ci (before the FREE comparisons)
SAMPLES = UNIT + ["threshold", "split", "perturbation", "sample_id", "value"]
NOT_BASELINES = ("free", "full", "oracle")  # FREE itself and the references


def engine_keys(df: pd.DataFrame) -> list[str]:
    """["engine"] when `df` holds live points of several engines (simulated rows, engine "none", pool with
    one live engine as they always did), else []."""
    if "engine" not in df.columns:
        return []
    return ["engine"] if df.loc[df["engine"] != "none", "engine"].nunique() > 1 else []


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
    cal = CAL + engine_keys(clean)
    points = clean.groupby(cal + ["threshold"], as_index=False, sort=True)[MEASURES].mean()
    full = points[points["method"] == "full"]
    on = ["task", "metric"]
    cand = lookup(points[~points["method"].isin(["full", "oracle"])], full, on, cal[len(CAL) :], "full_value")
    missing = cand.loc[cand["full_value"].isna(), ["task", "metric"]].drop_duplicates()
    if len(missing):
        raise ValueError(f"no full-model clean val row for (task, metric) {missing.values.tolist()}")
    best = pick_at_drop(cand, cal, x, max_drop)
    return best[cal + ["threshold", "value", "full_value", "drop", "meets_drop"] + MEASURES[1:]]


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
    eng = engine_keys(rows)
    on = CAL + [k for k in eng if k in operating.columns]  # one operating point per engine, or shared
    at = rows.merge(operating[on + ["threshold"]].rename(columns={"threshold": "_op"}), on=on)
    at = at[np.isclose(at["threshold"].astype(float), at["_op"].astype(float), rtol=0.0, atol=tol)]
    if at.empty:
        raise ValueError("sweep has no rows at the operating thresholds (outside the excluded splits)")
    keys = CAL + eng + ["kv_policy", "batch_size", "split", "perturbation"]
    out = at.groupby(keys, as_index=False, sort=True).agg(
        threshold=("_op", "first"), **{m: (m, "mean") for m in MEASURES}
    )
    clean = out[(out["split"] == "test") & (out["perturbation"] == "none")]
    out = lookup(out, clean, CAL + eng, ["kv_policy", "batch_size"], "clean_value")
    full = rows[rows["method"] == "full"]
    setting = ["task", "metric", "split", "perturbation"] + eng
    out = lookup(out, full, setting, ["batch_size", "kv_policy"], "full_value")
    out["drop_vs_clean"] = out["clean_value"] - out["value"]
    out["drop_vs_full"] = out["full_value"] - out["value"]
    parsed = [parse_perturbation(p) for p in out["perturbation"]]
    out["perturbation"] = [p[0] for p in parsed]
    out["severity"] = np.array([p[1] for p in parsed], dtype=int)
    cols = CAL + eng + ["split", "perturbation", "severity", "kv_policy", "batch_size", "threshold", "value"]
    cols += ["clean_value", "drop_vs_clean", "full_value", "drop_vs_full"] + MEASURES[1:]
    return out[cols].sort_values(CAL + eng + ["split", "perturbation", "severity"]).reset_index(drop=True)


def _wide(rows: pd.DataFrame, units: list[tuple[str, str]], ids: pd.Index, col: str) -> np.ndarray:
    """(len(ids), len(units)) matrix of `col` per (sample_id, (method, regime)); 0 where absent."""
    if rows.empty:
        return np.zeros((len(ids), len(units)))
    wide = rows.set_index(["sample_id", "method", "regime"])[col].unstack(["method", "regime"])
    return wide.reindex(index=ids, columns=pd.MultiIndex.from_tuples(units)).fillna(0.0).to_numpy(float)


def _mean_stats(values: np.ndarray, present: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the mean over present rows (the point) and over each resample's rows (n_boot, cols)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        point = values.sum(0) / present.sum(0)
        num, den = counts @ values, counts @ present
        return point, np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def compute_robustness_ci(
    samples: pd.DataFrame,
    operating: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    tol: float = 1e-6,
) -> pd.DataFrame:
    """Per (method, regime, task) at the operating threshold: `drop`, the mean over every perturbed test
    input (every perturbation x severity x question) of clean-test value minus shifted value, paired by
    sample_id within each perturbation; `diff`, for a baseline, its drop minus FREE's drop (one row per
    FREE regime, named in `vs_free`; above 0: FREE drops less); and test_novel apart (other questions,
    so not paired with clean test): `novel_value` and `novel_drop` = clean_value - novel_value.

    CIs (`<col>_lo`, `<col>_hi`) are bootstrap percentile intervals resampling sample_ids, with one set
    of resampled ids per task shared by every method, so `diff` is a paired bootstrap; test_novel ids
    are resampled on their own, independently of the clean ones. Rows repeated at one (method, regime,
    task, split, perturbation, sample_id) (seeds, sweeps, the full model run beside each method) are
    averaged first; seeds are not resampled. The full model (every threshold; regime "none") is a
    reference row, with no `diff`. ValueError when no sample sits at an operating threshold, or none of
    those is shifted."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    require(samples, SAMPLES, "samples")
    require(operating, CAL + ["threshold"], "operating")
    if engine_keys(samples):
        engines = sorted(set(samples["engine"]) - {"none"})
        raise ValueError(f"samples hold live points of several engines {engines}; pass one engine's rows")
    op = operating[UNIT + ["threshold"]].drop_duplicates()
    several = op.loc[op.duplicated(UNIT, keep=False), UNIT].drop_duplicates()
    if len(several):
        raise ValueError(f"several operating thresholds for (method, regime, task) {several.values.tolist()}")
    metrics = operating.groupby("task")["metric"].agg(lambda m: m.iloc[0] if m.nunique() == 1 else "value")
    rows = samples[samples["split"] != "val"]
    at = rows.merge(op.rename(columns={"threshold": "_op"}), on=UNIT)
    at = at[np.isclose(at["threshold"].astype(float), at["_op"].astype(float), rtol=0.0, atol=tol)]
    if at.empty:
        raise ValueError("samples has no rows at the operating thresholds (outside val)")
    full = rows[(rows["method"] == "full") & rows["task"].isin(set(at["task"]))].assign(regime="none")
    rows = pd.concat([at.drop(columns="_op"), full], ignore_index=True)
    for p in rows["perturbation"].unique():
        parse_perturbation(p)  # refuse malformed names here too
    keys = UNIT + ["split", "perturbation", "sample_id"]
    per = rows.groupby(keys, as_index=False, sort=True)["value"].mean()
    if not ((per["split"] == "test_novel") | (per["perturbation"] != "none")).any():
        raise ValueError("samples has no perturbed or test_novel rows at the operating thresholds")
    rng = np.random.default_rng(seed)
    out = []
    for task, g in per.groupby("task", sort=True):
        units = sorted(g[["method", "regime"]].drop_duplicates().itertuples(index=False, name=None))
        test = g[g["split"] == "test"]
        clean = test[test["perturbation"] == "none"]
        pairs = test[test["perturbation"] != "none"].merge(
            clean[["method", "regime", "sample_id", "value"]],
            on=["method", "regime", "sample_id"],
            suffixes=("", "_clean"),
        )
        pairs = pairs.assign(drop=pairs["value_clean"] - pairs["value"]).dropna(subset=["drop"])
        per_id = pairs.groupby(["method", "regime", "sample_id"], as_index=False).agg(
            drop=("drop", "sum"), n=("drop", "size")
        )
        shifts = pairs.groupby(["method", "regime"])["perturbation"].nunique()
        ids = pd.Index(sorted(set(clean["sample_id"])), name="sample_id")
        counts = sample_counts(len(ids), n_boot, rng)  # shared by every method of the task
        drop, drop_b = _mean_stats(_wide(per_id, units, ids, "drop"), _wide(per_id, units, ids, "n"), counts)
        clean = clean.dropna(subset=["value"]).assign(one=1.0)
        cv, cv_b = _mean_stats(_wide(clean, units, ids, "value"), _wide(clean, units, ids, "one"), counts)
        novel = g[(g["split"] == "test_novel") & (g["perturbation"] == "none")].dropna(subset=["value"])
        n_novel = novel.groupby(["method", "regime"]).size()
        novel_ids = pd.Index(sorted(set(novel["sample_id"])), name="sample_id")
        novel_counts = sample_counts(len(novel_ids), n_boot, rng)  # unpaired: drawn apart from the clean ids
        novel = novel.assign(one=1.0)
        nv, nv_b = _mean_stats(
            _wide(novel, units, novel_ids, "value"), _wide(novel, units, novel_ids, "one"), novel_counts
        )
        stats = {"drop": (drop, drop_b), "novel_value": (nv, nv_b), "novel_drop": (cv - nv, cv_b - nv_b)}
        bounds = {k: percentile_interval(b, level) for k, (_, b) in stats.items()}
        frees = [j for j, (m, _) in enumerate(units) if m == "free"]
        for j, (method, regime) in enumerate(units):
            row = {"method": method, "regime": regime, "task": task, "metric": metrics.get(task, "value")}
            mine = per_id[(per_id["method"] == method) & (per_id["regime"] == regime)]
            row |= {
                "n_samples": len(mine),
                "n_shifts": int(shifts.get((method, regime), 0)),
                "n_inputs": int(mine["n"].sum()),
                "clean_value": cv[j],
                "novel_n": int(n_novel.get((method, regime), 0)),
            }
            for k, (point, _) in stats.items():
                row |= {k: point[j], f"{k}_lo": bounds[k][0][j], f"{k}_hi": bounds[k][1][j]}
            vs = [(units[f][1], f) for f in frees] if method not in NOT_BASELINES and frees else [("", None)]
            for free_regime, f in vs:
                diff = {"vs_free": free_regime, "diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan}
                if f is not None:
                    lo, hi = percentile_interval(drop_b[:, [j]] - drop_b[:, [f]], level)
                    diff |= {"diff": drop[j] - drop[f], "diff_lo": lo[0], "diff_hi": hi[0]}
                out.append(row | diff)
    cols = UNIT + ["metric", "vs_free", "n_samples", "n_shifts", "n_inputs", "clean_value"]
    cols += [f"{k}{b}" for k in ("drop", "diff", "novel_value", "novel_drop") for b in ("", "_lo", "_hi")]
    cols.insert(cols.index("novel_value"), "novel_n")
    return pd.DataFrame(out)[cols]


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
