"""Sweep points and tables written before a SWEEP column existed, given it from what they recorded.

`n_samples` (how many samples a point decoded or evaluated) is exact for older sweeps too: a point's
`.samples.npy` holds one column per sample, and `samples.parquet` one row per sample of each point. A
resumed or reused sweep therefore gains the column instead of failing validation, and nothing is guessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import SWEEP_SAMPLES

POINT_KEYS = [c.name for c in SWEEP_SAMPLES.columns[:8]]  # what names a point in both tables


def point_n_samples(records: list[dict], npy: Path) -> list[dict]:
    """A point file's records, each with `n_samples` (older points: the columns of their samples file)."""
    if all("n_samples" in r for r in records):
        return records
    n = int(np.load(npy, mmap_mode="r").shape[1])  # (F, R): R samples
    return [{**r, "n_samples": r.get("n_samples", n)} for r in records]


def with_n_samples(df: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """A sweep table with `n_samples`; one written before the column gets each point's count of rows in
    its samples table (`samples`), and a point with none there is an error, never a guessed count."""
    if "n_samples" in df.columns:
        return df
    keys = POINT_KEYS + (["rank"] if "rank" in df.columns and "rank" in samples.columns else [])
    counts = samples.groupby(keys, dropna=False).size().rename("n_samples").reset_index()
    out = df.merge(counts, on=keys, how="left")
    if out["n_samples"].isna().any():
        missing = out.loc[out["n_samples"].isna(), POINT_KEYS].drop_duplicates().to_dict("records")
        raise FreeBenchError(f"sweep points without samples, so their n_samples is unknown: {missing}")
    return out.astype({"n_samples": "int64"})
