"""The BLIP-2-size table: the full model and the earliest-exiting point of each method's sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.scale import compute_replay, compute_scale, load_replay, load_scale


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


def _replay_samples(engine: str) -> pd.DataFrame:
    return pd.DataFrame({
        "method": ["free"] * 2, "threshold": [0.88] * 2, "engine": [engine] * 2, "sample_id": ["a", "b"],
        "tokens": [2, 2], "mean_exit_layer": [8.0, 20.0], "exit_layers": ["[8, 8]", "[8, 32]"],
        "replay_ms": [30.0, 50.0], "full_ms": [60.0, 60.0], "prefix_ms": [20.0, 20.0],
        "cost_layers": [20.0, 46.0], "full_cost_layers": [66.0, 66.0], "exits_at": ["8,16,24"] * 2,
    })  # fmt: skip


def test_replay_rows_measure_the_depths_against_both_expectations(tmp_path):
    pd.concat([_replay_samples("eager"), _replay_samples("graphs")]).to_csv(
        tmp_path / "replay_samples_blip2-opt-2.7b.csv", index=False
    )
    costs = pd.DataFrame({"policy": ["propagate"], "model": ["OPT-2.7b LM"], "num_layers": [32],
                          "ms_per_skipped_layer": [0.06], "ms_fixed_per_token": [0.66],
                          "ms_per_exit_check": [0.12], "engine": ["graphs"]})  # fmt: skip
    table = compute_replay(load_replay(tmp_path), costs).set_index("engine")
    row = table.loc["graphs"]
    assert row["model"] == "blip2-opt-2.7b" and row["questions"] == 2 and row["tokens"] == 4
    assert row["measured_speedup"] == 120.0 / 80.0 and row["lm_measured_speedup"] == 80.0 / 40.0
    assert row["expected_speedup"] == 132.0 / 66.0
    assert row["expected_with_prefix"] == 120.0 / (40.0 + 80.0 / 2.0)  # the prefix is not skipped
    assert row["mean_exit_layer"] == 14.0
    # three tokens at 8 (one check each: exit 8), one at 32 (three checks); FREE's check adds a layer
    check = 0.12 + 0.06
    full = 4 * (0.66 + 32 * 0.06)
    assert abs(row["projected_speedup"] - full / (4 * 0.66 + (3 * 8 + 32) * 0.06 + 6 * check)) < 1e-9
    assert np.isnan(table.loc["eager", "projected_speedup"])  # no eager cost row: no projection


def test_no_replay_files_give_an_empty_table(tmp_path):
    assert compute_replay(load_replay(tmp_path)).empty


def test_replays_of_two_sources_stay_apart_even_at_one_threshold(tmp_path):
    cpu = _replay_samples("eager").assign(source="cpu profile, live-free-semi-b1")
    gpu = _replay_samples("eager").assign(source="gpu profile, live-free-semi-s0-b1", mapping="24->32 nearest",
                                          replay_ms=[40.0, 80.0])  # fmt: skip
    table = compute_replay(pd.concat([cpu, gpu]).assign(model="blip2-opt-2.7b")).set_index("source")
    assert len(table) == 2 and (table["questions"] == 2).all()  # not one point of four questions
    assert table.loc["cpu profile, live-free-semi-b1", "mapping"] == "exact"  # rows from before the column
    assert table.loc["gpu profile, live-free-semi-s0-b1", "mapping"] == "24->32 nearest"
    assert table.loc["cpu profile, live-free-semi-b1", "measured_speedup"] == 120.0 / 80.0
    assert table.loc["gpu profile, live-free-semi-s0-b1", "measured_speedup"] == 120.0 / 120.0
