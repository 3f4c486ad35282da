"""The BLIP-2-size table: the full model and the earliest-exiting point of each method's sweep."""

from __future__ import annotations

import pandas as pd

from analyses.scale import compute_scale, load_scale


def test_scale_rows_pair_the_full_model_with_the_earliest_exit(tmp_path):
    sweep = pd.DataFrame({
        "method": ["deebert"] * 3, "point": ["deebert", "deebert", "full"], "threshold": [100.0, 0.0, 32.0],
        "questions": [500] * 3, "latency_ms_median": [28.0, 120.0, 118.0], "prefix_share": [0.8, 0.18, 0.19],
        "measured_speedup": [4.2, 0.98, 1.0], "expected_speedup": [3.2, 0.95, 1.0], "mean_exit_layer": [4.0, 32.0, 32.0],
    })  # fmt: skip
    sweep.to_csv(tmp_path / "sweep_blip2-opt-2.7b_eager.csv", index=False)
    pd.DataFrame({"method": ["deebert"], "check_ms_median": [0.19]}).to_csv(
        tmp_path / "exit_check_blip2-opt-2.7b.csv", index=False
    )
    table = compute_scale(*load_scale(tmp_path))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["model"] == "blip2-opt-2.7b" and row["exit_layer"] == 4.0 and row["exit_ms_median"] == 28.0
    assert row["full_ms_median"] == 118.0 and row["prefix_share"] == 0.19 and row["exit_check_ms"] == 0.19


def test_no_scale_files_give_an_empty_table(tmp_path):
    sweeps, checks = load_scale(tmp_path)
    assert sweeps.empty and compute_scale(sweeps, checks).empty
