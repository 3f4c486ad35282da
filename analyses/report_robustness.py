"""The report's robustness part: shifted inputs at each method's operating point (`analyses.robustness`),
drawn from the sweeps that hold shifted rows, with per-sample CIs where the samples tables are there.
Quality under shift does not depend on the decode engine, so where live points of several engines are
present one engine's rows are used (the one with shifted rows, eager first) and the rest are noted.
"""

from __future__ import annotations

import pandas as pd

from analyses import figures
from analyses.built import MAX_DROP, Built
from analyses.robustness import CAL, calibrate, compute_robustness, compute_robustness_ci


def _one_live_engine(b: Built, sweep: pd.DataFrame, shifted: pd.Series) -> pd.DataFrame:
    """`sweep` with the live rows of one engine only (simulated rows kept): one operating point per method."""
    if "engine" not in sweep.columns:
        return sweep
    live = sweep["engine"] != "none"
    engines = sorted(set(sweep.loc[live, "engine"]))
    if len(engines) <= 1:
        return sweep
    have = sorted(set(sweep.loc[live & shifted, "engine"])) or engines
    keep = "eager" if "eager" in have else have[0]
    dropped = ", ".join(g for g in engines if g != keep)
    b.res.notes.append(f"robustness: live rows of the {keep} engine used; those of {dropped} left out")
    return sweep[~live | (sweep["engine"] == keep)]


def robustness_part(b: Built) -> None:
    """Shifted inputs at each method's operating point. The sweeps holding shifted rows (reproduce's
    `robustness` sweep: one threshold per method, clean test beside the shifts at the same rows and
    batch) name the operating point themselves; otherwise it is calibrated on clean val."""
    sweep = b.res.sweep
    if sweep is None:
        b.missing["robustness"] = "no sweeps in this results folder"
        return
    shifted = (sweep["perturbation"] != "none") | (sweep["split"] == "test_novel")
    if not shifted.any():
        b.missing["robustness"] = "no perturbed or test_novel sweeps in this results folder"
        return
    sweep = _one_live_engine(b, sweep, shifted)
    shifted = (sweep["perturbation"] != "none") | (sweep["split"] == "test_novel")
    rows = sweep[sweep["sweep"].isin(sweep.loc[shifted, "sweep"].unique())]
    points = rows[rows["method"] != "full"]
    if points.groupby(CAL)["threshold"].nunique().max() == 1:
        operating = points.groupby(CAL, as_index=False)["threshold"].first()
    else:  # shifted sweeps over a grid: one kind of sweep (simulated where there are any), one batch size
        rows = sweep[sweep["timer"] == "none"] if (sweep.loc[shifted, "timer"] == "none").any() else sweep
        rows = rows[rows["batch_size"] == rows["batch_size"].min()]
        if not ((rows["split"] == "val") & (rows["perturbation"] == "none")).any():
            b.missing["robustness"] = "no clean val sweep to calibrate the operating point on"
            return
        operating = calibrate(rows, MAX_DROP)
    robust = compute_robustness(rows, operating)
    b.tables["robustness_operating"], b.tables["robustness"] = operating, robust
    b.tables["robustness_drop_by_shift"] = drop_by_shift(robust)
    _robustness_ci(b, rows, operating)
    metric = "vqa_accuracy" if (robust["metric"] == "vqa_accuracy").any() else robust["metric"].iloc[0]
    fig = figures.robustness_figure(robust, b.res.root / "figures", b.res.profile, metric)
    if fig is not None:
        b.figures["robustness_heatmap"] = fig


def _robustness_ci(b: Built, rows: pd.DataFrame, operating: pd.DataFrame) -> None:
    """Bootstrap CIs of the drop under shift from the per-sample tables of the sweeps (and batch sizes)
    that `rows` holds; without them the robustness claim gets no verdict, only mean drops."""
    samples = b.res.samples
    if samples is not None:
        on = ["sweep", "batch_size"] + (
            ["engine"] if "engine" in samples.columns and "engine" in rows else []
        )
        samples = samples.merge(rows[on].drop_duplicates(), on=on)
    if samples is None or samples.empty:
        b.missing["robustness_drop_ci"] = "no per-sample table (samples.parquet) for the robustness sweeps"
        return
    try:
        b.tables["robustness_drop_ci"] = compute_robustness_ci(
            samples, operating, n_boot=b.n_boot, seed=b.seed
        )
    except ValueError as err:
        b.missing["robustness_drop_ci"] = f"not computed: {err}"


def drop_by_shift(robust: pd.DataFrame) -> pd.DataFrame:
    """The mean drop vs clean test per method and split:perturbation:severity, one column each."""
    shift = robust["split"] + ":" + robust["perturbation"] + ":" + robust["severity"].astype(str)
    wide = robust.assign(shift=shift).pivot_table(index=["method", "regime", "metric"], columns="shift",
                                                  values="drop_vs_clean")  # fmt: skip
    return wide.reset_index()
