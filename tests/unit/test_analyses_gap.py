"""`analyses.simulation_gap` on a hand-made pair of sweep tables."""

from __future__ import annotations

import pandas as pd
import pytest

from analyses.simulation_gap import compute_simulation_gap


def _sweep(values: dict[float, float], speedups: dict[float, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "method": "free",
                "task": "caption",
                "metric": "CIDEr",
                "threshold": t,
                "value": v,
                "expected_speedup": speedups[t],
                "mean_exit_layer": 3.0,
            }
            for t, v in values.items()
        ]  # fmt: skip
    )


def test_gap_is_live_minus_simulated_on_shared_points() -> None:
    sim = _sweep({0.5: 1.0, 0.9: 1.2, 0.95: 1.3}, {0.5: 2.0, 0.9: 1.5, 0.95: 1.2})
    live = _sweep({0.5: 0.8, 0.9: 1.25}, {0.5: 1.8, 0.9: 1.5})
    gap = compute_simulation_gap(sim, live)
    assert list(gap["threshold"]) == [0.5, 0.9]  # 0.95 was not decoded live
    assert gap["value_gap"].tolist() == pytest.approx([-0.2, 0.05])
    assert gap["expected_speedup_gap"].tolist() == pytest.approx([-0.2, 0.0])


def test_duplicate_points_are_refused() -> None:
    sim = _sweep({0.5: 1.0}, {0.5: 2.0})
    with pytest.raises(pd.errors.MergeError):
        compute_simulation_gap(pd.concat([sim, sim]), sim)


def test_each_live_engine_is_its_own_row_against_the_same_simulation() -> None:
    sim = _sweep({0.5: 1.0, 0.9: 1.2}, {0.5: 2.0, 0.9: 1.5})
    eager = _sweep({0.5: 0.8, 0.9: 1.25}, {0.5: 1.8, 0.9: 1.5}).assign(engine="eager")
    graphs = _sweep({0.5: 0.9, 0.9: 1.2}, {0.5: 1.9, 0.9: 1.5}).assign(engine="graphs")
    gap = compute_simulation_gap(sim.assign(engine="none"), pd.concat([eager, graphs]))
    assert list(zip(gap["engine"], gap["threshold"], strict=True)) == [
        ("eager", 0.5), ("eager", 0.9), ("graphs", 0.5), ("graphs", 0.9)
    ]  # fmt: skip
    assert gap["value_gap"].tolist() == pytest.approx([-0.2, 0.05, -0.1, 0.0])
    with pytest.raises(pd.errors.MergeError, match="engine"):
        compute_simulation_gap(sim, pd.concat([eager, eager]))
