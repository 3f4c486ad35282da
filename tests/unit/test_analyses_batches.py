"""`analyses.batches` and `analyses.engine_targets` on hand-made frames: the batch's own expectation with
the prefix priced in, compacted against riding along, and the 0.9 targets."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.batches import compute_batches, compute_compaction, plot_batches  # noqa: E402
from analyses.engine_targets import (  # noqa: E402
    compute_engine_target_summary,
    compute_engine_targets,
    meets_target,
)

KEYS = ["method", "regime", "kv_policy", "batch_size", "task", "split", "perturbation", "timer", "engine", "compact"]
BASE = dict(method="free", regime="semi", kv_policy="propagate", task="vqa", split="test", perturbation="none",
            timer="cuda_event", engine="eager", threshold=0.72)  # fmt: skip


def _point(batch: int, compact: str, measured: float, lo: float, hi: float, batch_expected: float) -> dict:
    return {**BASE, "batch_size": batch, "compact": compact, "metric": "vqa_accuracy", "value": 0.88,
            "measured_speedup": measured, "measured_speedup_lo": lo, "measured_speedup_hi": hi,
            "expected_speedup": 2.2, "expected_batch_speedup": batch_expected, "n_samples": 16}  # fmt: skip


def _samples(batch: int, compact: str) -> pd.DataFrame:
    """16 questions: full 10 ms, prefix 2 ms each (sums 160 and 32)."""
    return pd.DataFrame({**BASE, "batch_size": batch, "compact": compact, "sample_id": [f"q{i}" for i in range(16)],
                         "full_latency_ms": 10.0, "latency_ms": 8.0, "prefix_ms": 2.0})  # fmt: skip


def test_batch_expectation_with_the_prefix_and_the_target_by_hand() -> None:
    # full 160, prefix 32: E_b = 2 gives 160 / (32 + 128 / 2) = 160 / 96
    expected = 160 / 96
    curves = pd.DataFrame([_point(8, "true", 0.89 * expected, 1.40, 1.50, 2.0),
                           _point(8, "false", 0.90 * expected, 1.45, 1.55, 2.0),
                           _point(32, "true", 1.2, 1.1, 1.3, np.nan),  # not recorded by the sweep
                           _point(1, "true", 1.5, 1.4, 1.6, 2.0)])  # batch 1: not a batch  # fmt: skip
    samples = pd.concat([_samples(8, "true"), _samples(8, "false"), _samples(32, "true")])
    got = compute_batches(curves, samples, KEYS).set_index(["batch_size", "compact"])
    assert len(got) == 3
    assert got.loc[(8, "true"), "expected_batch_with_prefix"] == pytest.approx(expected)
    assert got.loc[(8, "true"), "prefix_share"] == pytest.approx(0.2)
    assert got.loc[(8, "true"), "measured_over_batch_expected"] == pytest.approx(0.89)
    assert not got.loc[(8, "true"), "meets_target"]  # 0.89 fails the 0.9 target
    assert got.loc[(8, "false"), "meets_target"]  # 0.90 meets it
    assert pd.isna(got.loc[(32, "true"), "meets_target"])  # no batch count: neither a pass nor a fail
    comp = compute_compaction(got.reset_index())
    assert len(comp) == 1 and comp.iloc[0]["faster"] == "within noise"  # CIs [1.40, 1.50] and [1.45, 1.55]
    apart = compute_compaction(got.reset_index().assign(measured_speedup_hi=[1.44, 1.55, 1.3]))
    assert apart.iloc[0]["faster"] == "riding along"
    fig, ax = plt.subplots()
    plot_batches(got.reset_index(), ax)
    assert len(ax.get_lines()) == 4  # two points, y = x and the target line
    plt.close(fig)


def test_without_recorded_batch_counts_nothing_is_judged_and_no_figure_is_drawn() -> None:
    curves = pd.DataFrame([_point(8, "true", 1.2, 1.1, 1.3, 2.0)]).drop(columns="expected_batch_speedup")
    got = compute_batches(curves, _samples(8, "true"), KEYS)
    assert got["expected_batch_with_prefix"].isna().all() and got["meets_target"].isna().all()
    with pytest.raises(ValueError, match="expected_batch_speedup"):
        plot_batches(got, plt.subplots()[1])
    plt.close("all")


def test_meets_target_is_strict_about_0_89_and_missing() -> None:
    got = meets_target(pd.Series([0.89, 0.8999, 0.9, 1.2, np.nan]))
    assert got.tolist()[:4] == [False, False, True, True] and pd.isna(got.iloc[4])


def _fixed(engine: str, batch: int, with_prefix: float, decode: float, threshold: float) -> dict:
    return {"method": "free", "regime": "semi", "kv_policy": "propagate", "threshold": threshold, "engine": engine,
            "batch_size": batch, "measured_over_expected_with_prefix": with_prefix,
            "lm_measured_over_expected": decode}  # fmt: skip


def test_engine_targets_count_points_and_name_the_worst_per_engine() -> None:
    fixed = pd.DataFrame([_fixed("graphs", 1, 0.95, 0.91, 0.7), _fixed("graphs", 1, 0.89, 0.80, 0.8),
                          _fixed("eager", 1, 0.70, 0.60, 0.7), _fixed("eager", 1, np.nan, 0.95, 0.8)])  # fmt: skip
    targets = compute_engine_targets(fixed)
    assert targets["meets_with_prefix"].tolist()[:3] == [True, False, False]
    s = compute_engine_target_summary(targets).set_index("engine")
    assert s.loc["graphs", "meet_with_prefix"] == "1 of 2" and s.loc["graphs", "meet_decode_phase"] == "1 of 2"
    assert s.loc["graphs", "worst_with_prefix"] == "free-semi propagate t=0.8: 0.890"
    assert s.loc["eager", "meet_with_prefix"] == "0 of 1"  # the point without a ratio is not counted
    assert s.loc["eager", "meet_decode_phase"] == "1 of 2" and s.loc["eager", "points"] == 2
    with pytest.raises(ValueError, match="lm_measured_over_expected"):
        compute_engine_targets(fixed.drop(columns="lm_measured_over_expected"))
