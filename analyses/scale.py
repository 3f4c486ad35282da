"""BLIP-2 at full size (random init, `results/<profile>/scale/`): per model and method, the full
model's latency at batch 1, the prefix's share of it, and what exiting at the first exit measures
against what the layer count expects; next to the projection, which prices the embedded model's exit
depths with the engine benchmarks' costs instead."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def load_scale(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep and exit-check tables of `bench_scale.py`, with the model size as a column."""

    def read(prefix: str) -> pd.DataFrame:  # sweep_<size>_<engine>.csv, exit_check_<size>.csv
        files = sorted(folder.glob(f"{prefix}*.csv"))
        frames = [pd.read_csv(f).assign(size=f.stem.removeprefix(prefix).split("_")[0]) for f in files]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return read("sweep_"), read("exit_check_")


def compute_scale(sweeps: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """One row per (size, method): the full model and the earliest-exiting point of the same sweep."""
    rows: list[dict] = []
    if sweeps.empty:
        return pd.DataFrame(rows)
    for (size, method), g in sweeps.groupby(["size", "method"], sort=True):
        full = g[g["point"] == "full"]
        exits = g[g["point"] != "full"].sort_values("latency_ms_median")
        if full.empty or exits.empty:
            continue
        f, e = full.iloc[0], exits.iloc[0]
        check = checks[(checks["size"] == size) & (checks["method"] == method)] if len(checks) else checks
        rows.append({
            "model": size, "method": method, "questions": int(f["questions"]),
            "full_ms_median": f["latency_ms_median"], "prefix_share": f["prefix_share"],
            "exit_layer": e["mean_exit_layer"], "exit_ms_median": e["latency_ms_median"],
            "measured_speedup": e["measured_speedup"], "expected_speedup": e["expected_speedup"],
            "exit_check_ms": check["check_ms_median"].iloc[0] if len(check) else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)
