"""`analyses.fixed_cost` on a hand-made samples table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyses.fixed_cost import compute_fixed_share


def _samples(prefix: float, timed: bool = True) -> pd.DataFrame:
    base = {"method": "free", "regime": "semi", "kv_policy": "propagate", "batch_size": 1, "task": "vqa",
            "split": "test", "perturbation": "none", "threshold": 0.7}  # fmt: skip
    # two samples: full 10 ms each, early 6 ms each, prefix `prefix` ms; LM cost 24 vs 12 layers
    rows = [{**base, "latency_ms": 6.0, "full_latency_ms": 10.0, "prefix_ms": prefix, "cost_layers": 12.0,
             "full_cost_layers": 24.0} for _ in range(2)]  # fmt: skip
    df = pd.DataFrame(rows)
    if not timed:
        df[["latency_ms", "full_latency_ms", "prefix_ms"]] = np.nan
    return df


def test_prefix_share_and_lm_speedup_by_hand() -> None:
    out = compute_fixed_share(_samples(prefix=2.0)).iloc[0]
    assert out.prefix_share == pytest.approx(0.2)
    assert out.measured_speedup == pytest.approx(10 / 6) and out.expected_speedup == pytest.approx(2.0)
    assert out.lm_measured_speedup == pytest.approx(8 / 4)  # (10 - 2) / (6 - 2)
    assert out.expected_with_prefix == pytest.approx(10 / (2 + 8 / 2))  # 1.667: the gap is all prefix
    assert out.measured_over_expected_with_prefix == pytest.approx(1.0)


def test_untimed_points_are_left_out_and_bad_input_named() -> None:
    assert compute_fixed_share(_samples(prefix=2.0, timed=False)).empty
    with pytest.raises(ValueError, match="prefix_ms"):
        compute_fixed_share(_samples(prefix=2.0).drop(columns="prefix_ms"))


def test_sweeps_that_share_every_key_stay_apart() -> None:
    a, b = _samples(prefix=2.0).assign(sweep="b8-compact"), _samples(prefix=4.0).assign(sweep="b8-no-compact")
    out = compute_fixed_share(pd.concat([a, b])).set_index("sweep")
    assert out.loc["b8-compact", "prefix_share"] == pytest.approx(0.2)
    assert out.loc["b8-no-compact", "prefix_share"] == pytest.approx(0.4)


def test_two_engines_at_one_threshold_are_two_rows() -> None:
    eager = _samples(prefix=2.0).assign(engine="eager")
    graphs = _samples(prefix=2.0).assign(engine="graphs", latency_ms=4.0, full_latency_ms=8.0)
    out = compute_fixed_share(pd.concat([eager, graphs])).set_index("engine")
    assert out.loc["eager", "measured_speedup"] == pytest.approx(10 / 6)
    assert out.loc["graphs", "measured_speedup"] == pytest.approx(2.0)  # its own full model's time
    assert out.loc["graphs", "prefix_share"] == pytest.approx(0.25)
