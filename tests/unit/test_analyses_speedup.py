"""`analyses.speedup` (and the `analyses.bootstrap` it uses) on hand-made sweep and sample tables."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.speedup import (  # noqa: E402
    best_at_drop,
    compute_auc,
    compute_curves,
    compute_pareto,
    plot_speedup,
)

SETTING = {
    "kv_policy": "propagate",
    "batch_size": 1,
    "task": "vqa",
    "split": "test",
    "perturbation": "none",
    "metric": "vqa_accuracy",
    "timer": "cuda_event",
}


def _sweep(method: str, points: list[tuple[float, float, float, float]], **kw: object) -> pd.DataFrame:
    """Rows (threshold, value, expected_speedup, measured_speedup) of one method's curve."""
    base = SETTING | {"method": method, "regime": "none" if method in ("full", "static") else "semi"} | kw
    rows = [
        base
        | {
            "threshold": t,
            "value": v,
            "expected_speedup": e,
            "measured_speedup": m,
            "mean_exit_layer": 24 / e,
        }
        for t, v, e, m in points
    ]
    return pd.DataFrame(rows)


def _full(value: float = 0.80, **kw: object) -> pd.DataFrame:
    return _sweep("full", [(24.0, value, 1.0, 1.0)], **kw)


def _samples(
    n: int, thresholds: list[float], rng: np.random.Generator, p: float = 0.7, **kw: object
) -> pd.DataFrame:
    """n samples of method free at each threshold: Bernoulli(p) accuracy, costs and latencies."""
    rows = []
    for t in thresholds:
        cost = rng.uniform(4, 24, n)
        lat = cost * rng.uniform(0.9, 1.1, n)
        rows.append(
            pd.DataFrame(
                {k: v for k, v in SETTING.items() if k != "metric"}
                | {
                    "method": "free",
                    "regime": "semi",
                    "threshold": t,
                    "sample_id": [f"q{i}" for i in range(n)],
                }
                | {"value": (rng.random(n) < p).astype(float), "exit_layer_mean": cost, "cost_layers": cost}
                | {"full_cost_layers": 24.0, "latency_ms": lat, "full_latency_ms": 24.0}
                | kw
            )
        )
    return pd.concat(rows, ignore_index=True)


def _sweep_from_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """The sweep rows the samples imply (point estimates computed the documented way)."""
    g = samples.groupby("threshold")
    points = [
        (
            t,
            s["value"].mean(),
            s["full_cost_layers"].sum() / s["cost_layers"].sum(),
            s["full_latency_ms"].sum() / s["latency_ms"].sum(),
        )
        for t, s in g
    ]
    return pd.concat([_sweep("free", points), _full()], ignore_index=True)


def _width(curves: pd.DataFrame, col: str = "value") -> float:
    row = curves[curves["method"] == "free"].iloc[0]
    return float(row[f"{col}_hi"] - row[f"{col}_lo"])


def test_best_at_drop_picks_fastest_point_within_the_drop() -> None:
    sweep = pd.concat(
        [
            _full(0.80),
            _sweep("free", [(0.5, 0.785, 3.0, 2.0), (0.6, 0.795, 2.5, 1.8), (0.7, 0.80, 2.0, 1.5)]),
            _sweep("deebert", [(0.5, 0.70, 3.0, 2.2), (0.6, 0.75, 2.0, 1.4)]),
        ],
        ignore_index=True,
    )
    best = best_at_drop(compute_curves(sweep), max_drop=0.01).set_index("method")
    assert best.loc["free", "threshold"] == 0.6  # 0.5 is faster but 1.5 points down
    assert best.loc["free", "measured_speedup"] == 1.8 and best.loc["free", "expected_speedup"] == 2.5
    assert best.loc["free", "drop"] == pytest.approx(0.005)
    assert bool(best.loc["free", "meets_drop"])
    assert not bool(best.loc["deebert", "meets_drop"])  # nothing within a point: best quality, flagged
    assert best.loc["deebert", "threshold"] == 0.6
    assert "full" not in best.index
    loose = best_at_drop(compute_curves(sweep), max_drop=0.02).set_index("method")
    assert loose.loc["free", "threshold"] == 0.5


def test_best_at_drop_compares_with_the_full_row_of_the_same_batch() -> None:
    sweep = pd.concat(
        [
            _full(0.80),
            _full(0.60, batch_size=8),
            _sweep("free", [(0.5, 0.595, 3.0, 2.0)], batch_size=8),
        ],
        ignore_index=True,
    )
    best = best_at_drop(compute_curves(sweep), x="expected_speedup")
    assert best["full_value"].tolist() == [0.60] and bool(best["meets_drop"].iloc[0])


def test_pareto_drops_dominated_points() -> None:
    curves = compute_curves(
        pd.concat([_full(), _sweep("free", [(0.1, 0.7, 3, 3.0), (0.2, 0.6, 2, 2.0), (0.3, 0.8, 2, 1.5)])])
    )
    front = compute_pareto(curves)
    assert front.loc[front["method"] == "free", "threshold"].tolist() == [0.3, 0.1]  # 0.2 is slower and worse


def test_auc_of_a_flat_curve_is_its_value() -> None:
    curves = compute_curves(
        pd.concat([_full(), _sweep("free", [(0.1, 0.8, 2.0, 1.0), (0.2, 0.8, 2.0, 2.0)])])
    )
    auc = compute_auc(curves)
    assert auc["auc"].tolist() == pytest.approx([0.8])
    assert (auc["x_lo"].iloc[0], auc["x_hi"].iloc[0]) == (1.0, 2.0)


def test_auc_of_linear_curves_by_hand_over_a_common_range() -> None:
    a = _sweep("free", [(0.1, 0.9, 1, 1.0), (0.2, 0.7, 2, 2.0), (0.3, 0.5, 3, 3.0)])
    b = _sweep("deebert", [(0.1, 0.8, 1, 1.0), (0.2, 0.6, 2, 2.0)])
    static = _sweep("static", [(4.0, 0.3, 6, 5.0)])  # a reference point: neither a curve nor a range end
    curves = compute_curves(pd.concat([_full(), a, b, static], ignore_index=True))
    auc = compute_auc(curves).set_index("method")
    assert set(auc.index) == {"free", "deebert"}
    assert auc["x_hi"].tolist() == [2.0, 2.0]  # the smaller of the two methods' largest speedups
    assert auc.loc["free", "auc"] == pytest.approx(0.8)  # mean of 0.9 -> 0.7 over [1, 2]
    assert auc.loc["deebert", "auc"] == pytest.approx(0.7)
    wide = compute_auc(curves, x_range=(1.0, 3.0)).set_index("method")
    assert wide.loc["free", "auc"] == pytest.approx(0.7)
    assert np.isnan(wide.loc["deebert", "auc"])  # its frontier stops at 2x
    step = compute_auc(curves, x_range=(1.0, 3.0), interp="step").set_index("method")
    assert step.loc["free", "auc"] == pytest.approx((0.7 + 0.5) / 2)  # (1,2] at 0.7, (2,3] at 0.5


def test_auc_is_nan_when_no_method_beats_one() -> None:
    curves = compute_curves(pd.concat([_full(), _sweep("free", [(0.1, 0.8, 1.2, 0.9)])]))
    assert np.isnan(compute_auc(curves)["auc"].iloc[0])


def test_without_samples_cis_are_nan() -> None:
    curves = compute_curves(pd.concat([_full(), _sweep("free", [(0.1, 0.8, 2.0, 1.5)])]))
    ci = [c for c in curves.columns if c.endswith(("_lo", "_hi"))]
    assert len(ci) == 6 and curves[ci].isna().all().all()
    assert curves["n_samples"].isna().all()  # nothing counted the questions: missing, never 0


def test_n_samples_comes_from_the_sweep_else_the_samples_else_is_missing() -> None:
    rng = np.random.default_rng(4)
    samples = pd.concat([_samples(30, [0.5], rng, seed=s) for s in (0, 1)], ignore_index=True)  # 2 seeds
    sweep = _sweep_from_samples(samples[samples["seed"] == 0])
    counted = compute_curves(sweep, samples, n_boot=20).set_index("method")["n_samples"]
    assert counted["free"] == 30 and pd.isna(counted["full"])  # questions, not rows; the full row: no samples
    recorded = compute_curves(sweep.assign(n_samples=[25, 40]), samples, n_boot=20).set_index("method")
    assert recorded["n_samples"].tolist() == [25, 40] and recorded["n_samples"].dtype == "Int64"
    old = compute_curves(sweep).set_index("method")["n_samples"]  # a sweep written before the column
    assert old.isna().all()
    partly = compute_curves(sweep.assign(n_samples=[np.nan, 40]), samples, n_boot=20).set_index("method")
    assert partly["n_samples"].tolist() == [30, 40]


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(1)
    widths = {}
    for n in (50, 2000):
        samples = _samples(n, [0.5, 0.7], rng)
        sweep = _sweep_from_samples(samples)
        curves = compute_curves(sweep, samples, n_boot=400)
        free = curves[curves["method"] == "free"]
        for col in ("value", "expected_speedup", "measured_speedup"):
            assert (free[f"{col}_lo"] <= free[col]).all() and (free[col] <= free[f"{col}_hi"]).all()
        assert (free["n_samples"] == n).all()
        assert curves.loc[curves["method"] == "full", "value_lo"].isna().all()  # no samples for it
        widths[n] = _width(curves), _width(curves, "expected_speedup")
    assert widths[2000][0] < widths[50][0] / 3 and widths[2000][1] < widths[50][1] / 3


def test_corpus_metric_gets_speedup_cis_only_and_simulated_points_no_measured_ci() -> None:
    rng = np.random.default_rng(2)
    samples = _samples(
        200, [0.5], rng, task="caption", timer="none", latency_ms=np.nan, full_latency_ms=np.nan
    )
    sweep = pd.concat(
        [_sweep("free", [(0.5, 1.1, 1.5, np.nan)], task="caption", metric="CIDEr", timer="none")]
    )
    row = compute_curves(sweep, samples.assign(value=np.nan), n_boot=200).iloc[0]
    assert np.isnan(row["value_lo"]) and np.isnan(row["measured_speedup_lo"])
    assert row["expected_speedup_lo"] < row["expected_speedup_hi"]
    row = compute_curves(sweep, samples, n_boot=200).iloc[0]  # a per-sample value is not CIDEr's
    assert np.isnan(row["value_lo"])


def test_seed_level_resampling_widens_cis_when_seeds_disagree() -> None:
    rng = np.random.default_rng(3)
    samples = pd.concat(
        [_samples(300, [0.5], rng, p=p, seed=s) for s, p in enumerate((0.5, 0.7, 0.9))], ignore_index=True
    )
    est = samples["value"].mean()
    per_seed = [(0.5, samples.loc[samples["seed"] == s, "value"].mean(), 2.0, 1.5) for s in range(3)]
    sweep = pd.concat([_sweep("free", [p], seed=s) for s, p in enumerate(per_seed)], ignore_index=True)
    seeded = compute_curves(sweep, samples, n_boot=500)
    assert seeded["n_seeds"].iloc[0] == 3 and seeded["value"].iloc[0] == pytest.approx(est)
    pooled_samples = samples.assign(sample_id=samples["seed"].astype(str) + samples["sample_id"]).drop(
        columns="seed"
    )
    pooled = compute_curves(_sweep("free", [(0.5, est, 2.0, 1.5)]), pooled_samples, n_boot=500)
    assert _width(seeded) > 3 * _width(pooled)  # 3 disagreeing seeds carry far less than 900 samples
    agree = samples.assign(value=(rng.random(len(samples)) < 0.7).astype(float))
    assert _width(compute_curves(sweep, agree, n_boot=500)) < _width(seeded) / 2


def test_curves_of_one_sweep_share_resamples_across_thresholds() -> None:
    rng = np.random.default_rng(4)
    samples = _samples(100, [0.5, 0.6], rng)
    samples.loc[samples["threshold"] == 0.6, "value"] = samples.loc[
        samples["threshold"] == 0.5, "value"
    ].to_numpy()
    curves = compute_curves(_sweep_from_samples(samples), samples, n_boot=300)
    free = curves[curves["method"] == "free"]
    assert free["value_lo"].nunique() == 1 and free["value_hi"].nunique() == 1  # paired: identical CIs


def test_repeated_full_rows_are_averaged_but_repeated_points_refused() -> None:
    sweep = pd.concat([_full(0.8), _full(0.8), _sweep("free", [(0.1, 0.8, 2.0, 1.5)])], ignore_index=True)
    assert (compute_curves(sweep)["method"] == "full").sum() == 1
    with pytest.raises(ValueError, match="extra_keys"):
        compute_curves(pd.concat([sweep, _sweep("free", [(0.1, 0.7, 2.0, 1.4)])]))
    sim = _sweep("free", [(0.1, 0.7, 2.0, np.nan)], timer="none")  # a simulated point is another point
    assert len(compute_curves(pd.concat([sweep, sim]))) == 3


@pytest.mark.parametrize("column", ["value", "measured_speedup", "threshold"])
def test_missing_columns_are_named(column: str) -> None:
    sweep = pd.concat([_full(), _sweep("free", [(0.1, 0.8, 2.0, 1.5)])]).drop(columns=column)
    with pytest.raises(ValueError, match=column):
        compute_curves(sweep)


def test_malformed_input_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        compute_curves(pd.DataFrame())
    sweep = pd.concat([_full(), _sweep("free", [(0.1, 0.8, 2.0, 1.5)])])
    with pytest.raises(ValueError, match="sample_id"):
        compute_curves(sweep, _samples(5, [0.1], np.random.default_rng(0)).drop(columns="sample_id"))
    curves = compute_curves(sweep)
    with pytest.raises(ValueError, match="wall_speedup"):
        best_at_drop(curves, x="wall_speedup")
    with pytest.raises(ValueError, match="BLEU"):
        plot_speedup(curves, plt.figure().gca(), metric="BLEU")
    with pytest.raises(ValueError, match="full"):
        best_at_drop(curves[curves["method"] != "full"])
    with pytest.raises(ValueError, match="measured_speedup"):
        best_at_drop(compute_curves(sweep.assign(measured_speedup=np.nan)))
    plt.close("all")


def test_plot_draws_curves_references_and_ceiling() -> None:
    sweep = pd.concat(
        [
            _full(0.80),
            _sweep("free", [(0.5, 0.78, 3.0, 2.0), (0.6, 0.79, 2.5, 1.8)]),
            _sweep("deebert", [(0.5, 0.70, 3.0, 2.2), (0.6, 0.75, 2.0, 1.4)]),
            _sweep("static", [(4.0, 0.3, 6.0, 4.0), (8.0, 0.6, 3.0, 2.5)]),
            _sweep("oracle", [(0.0, 0.9, 3.0, np.nan)]),
        ],
        ignore_index=True,
    )
    rng = np.random.default_rng(5)
    curves = compute_curves(sweep, _samples(50, [0.5, 0.6], rng), n_boot=100)
    fig, ax = plt.subplots()
    out = plot_speedup(curves, ax, x="measured_speedup")
    assert out is ax
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["deebert", "free", "static exits", "full model", "oracle"]
    assert len(ax.collections) == 1  # a CI band for free only: deebert has no samples
    assert "measured" in ax.get_xlabel() and ax.get_ylabel() == "vqa_accuracy"
    star = ax.get_lines()[3]
    assert star.get_marker() == "*" and list(star.get_xdata()) == [1.0]
    assert ax.get_lines()[4].get_linestyle() == "--"
    ax2 = plot_speedup(curves, plt.subplots()[1], x="expected_speedup", task="vqa")
    assert "expected" in ax2.get_xlabel()
    plt.close("all")


def test_importing_the_analyses_leaves_torch_out() -> None:
    code = "import sys, analyses.speedup, analyses.bootstrap; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_curves_on_the_same_samples_share_resamples() -> None:
    """One count matrix per sample set: two methods with the same per-sample values on the same questions
    get identical CIs (paired); the same values on other questions get a draw of their own."""
    from analyses.bootstrap import bootstrap_points

    rng = np.random.default_rng(5)
    a = _samples(150, [0.5], rng)
    b = a.assign(method="deebert")
    c = a.assign(method="pabee", sample_id=[f"other{i}" for i in range(len(a))])
    cis = bootstrap_points(pd.concat([a, b, c]), ["method"], n_boot=300).set_index("method")
    assert cis.loc["free", "value_lo"] == cis.loc["deebert", "value_lo"]
    assert cis.loc["free", "measured_speedup_hi"] == cis.loc["deebert", "measured_speedup_hi"]
    # continuous latencies: two independent draws practically never give the same interval
    assert cis.loc["free", "measured_speedup_lo"] != cis.loc["pabee", "measured_speedup_lo"]
