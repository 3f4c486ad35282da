"""How far a simulated sweep is from live decoding at the same thresholds.

The simulation is exact for a first token and an approximation after it (later positions are
conditioned on the teacher-forced continuation, not on the exits' own tokens), so for captions the
gap is the price of sweeping 101 thresholds offline. Inputs are two `records.SWEEP` tables. Live points
of several decode engines (`engine`: eager, graphs) are compared with the simulation one engine at a
time: each engine is its own row, never averaged into another's.
"""

from __future__ import annotations

import pandas as pd

KEYS = ["method", "task", "metric", "threshold"]


def compute_simulation_gap(simulated: pd.DataFrame, live: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, task, metric, threshold) present in both, and per live `engine` where the live
    table has that column: simulated and live quality and expected speedup, and their differences
    (live - simulated). Points only one side has are dropped; a point repeated on one side is refused."""
    cols = KEYS + ["value", "expected_speedup", "mean_exit_layer"]
    engine = ["engine"] if "engine" in live.columns else []
    live_keys = KEYS + engine
    if live.duplicated(live_keys).any():
        raise pd.errors.MergeError(f"live repeats a point of {live_keys}; one row per point expected")
    merged = simulated[cols].merge(
        live[cols + engine], on=KEYS, suffixes=("_simulated", "_live"), validate="one_to_many"
    )
    merged["value_gap"] = merged["value_live"] - merged["value_simulated"]
    merged["expected_speedup_gap"] = merged["expected_speedup_live"] - merged["expected_speedup_simulated"]
    return merged.sort_values(engine + KEYS).reset_index(drop=True)
