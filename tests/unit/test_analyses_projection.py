"""The projection to a larger decoder: costs from a bench JSON, and speedups you can work out by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analyses.projection import compute_projection, costs_from_bench, projection_points


def _bench(policy: str, full: float, half: float, check: float, timer: str = "cuda_event") -> dict:
    extra = {"policy": policy, "model": "big", "num_layers": 32, "exit_layer": 16, "ms_per_token_full": full,
             "ms_per_token_static_exit": half, "ms_per_exit_check": check, "machine": {"timer": timer}}  # fmt: skip
    return {"name": f"test_static_exit_saves_what_it_skips[cuda-{policy}]", "extra_info": extra}


def test_costs_from_bench_price_a_skipped_layer_and_the_rest() -> None:
    bench = {"benchmarks": [_bench("deferred", 10.0, 6.0, 1.0), _bench("propagate", 10.0, 9.0, 1.0, "cpu_wall"),
                            {"name": "test_other", "extra_info": {}}]}  # fmt: skip
    costs = costs_from_bench(bench)
    assert len(costs) == 1  # CPU timings and other benchmarks are not costs of the GPU shape
    row = costs.iloc[0]
    assert row["ms_per_skipped_layer"] == pytest.approx(0.25) and row["ms_fixed_per_token"] == pytest.approx(
        2.0
    )


def _point(method: str, hist: dict) -> dict:
    return {"method": method, "regime": "semi", "kv_policy": "deferred", "threshold": 0.5,
            "exit_layer_hist": json.dumps(hist), "exits_at": "4,8,12,16,20", "depth": 24}  # fmt: skip


def test_projection_by_hand() -> None:
    costs = costs_from_bench({"benchmarks": [_bench("deferred", 10.0, 6.0, 1.0)]})  # c 0.25, F 2, k 1
    points = pd.DataFrame(
        [_point("deebert", {"4": 1, "24": 1}), _point("free", {"4": 1, "24": 1}), _point("static", {"16": 2})]
    )
    got = compute_projection(points, costs).set_index("method")
    # deebert: token 1 runs 4*32/24 layers and 1 check, token 2 all 32 and 5 checks;
    # full = 2 * (2 + 32 * 0.25) = 20; early = 2 * 2 + (16/3 + 32) * 0.25 + 6 * 1
    assert got.loc["deebert", "projected_speedup"] == pytest.approx(20 / (4 + (16 / 3 + 32) * 0.25 + 6))
    assert got.loc["deebert", "checks_per_token"] == pytest.approx(3.0)
    # free's check also runs its generator layer
    assert got.loc["free", "projected_speedup"] == pytest.approx(20 / (4 + (16 / 3 + 32) * 0.25 + 6 * 1.25))
    # static: no check, 16 of 24 layers -> 64/3 of 32
    assert got.loc["static", "projected_speedup"] == pytest.approx(20 / (4 + 2 * 64 / 3 * 0.25))
    assert got.loc["static", "mean_exit_layer"] == pytest.approx(64 / 3)


def test_projection_needs_matching_policy_and_columns() -> None:
    costs = costs_from_bench({"benchmarks": [_bench("deferred", 10.0, 6.0, 1.0)]})
    other = pd.DataFrame([{**_point("deebert", {"4": 1}), "kv_policy": "propagate"}])
    assert compute_projection(other, costs).empty
    with pytest.raises(ValueError, match="exits_at"):
        compute_projection(other.drop(columns="exits_at"), costs)


def test_projection_points_keep_timed_batch1_vqa_with_depth() -> None:
    base = {"timer": "cuda_event", "task": "vqa", "metric": "vqa_accuracy", "batch_size": 1, "perturbation": "none",
            "split": "test", "sweep": "live-a", "exits_at": "4,8", "kv_policy": "propagate"}  # fmt: skip
    sweep = pd.DataFrame([
        {**base, "method": "full", "threshold": 24.0},
        {**base, "method": "free", "threshold": 0.5},
        {**base, "method": "free", "threshold": 0.6, "batch_size": 8},
        {**base, "method": "free", "threshold": 0.7, "timer": "none"},
        {**base, "method": "free", "threshold": 0.8, "exits_at": ""},
    ])  # fmt: skip
    pts = projection_points(sweep)
    assert pts["threshold"].tolist() == [0.5] and pts["depth"].tolist() == [24.0]


def test_costs_that_are_not_physical_are_left_out_with_a_reason() -> None:
    """A static exit that saved more than its layers (fixed cost < 0) or a negative exit check is
    host-bound noise (the eager engine on the H200 at commit 058e16a): no projection may rest on it."""
    from analyses.projection import physical_costs

    bench = {"benchmarks": [_bench("propagate", 19.5, 9.5, 0.4), _bench("deferred", 10.0, 6.0, -0.2),
                            _bench("full", 10.0, 6.0, 1.0)]}  # fmt: skip
    costs = costs_from_bench(bench)
    kept, notes = physical_costs(costs)
    assert list(kept["policy"]) == ["full"]
    assert len(notes) == 2 and "propagate" in notes[0] and "fixed -0.500" in notes[0]
    assert "deferred" in notes[1] and "check -0.200" in notes[1]
