"""Bootstrap confidence intervals over samples (and over training seeds first, where there are several).

A resample is stored as a row of counts (how often each sample was drawn), so every statistic of every
resample is one matrix product: 1000 resamples x 4000 samples x 100 thresholds is a single BLAS call,
not a Python loop. One count matrix is drawn per sample set and applied to every threshold of every curve
evaluated on those samples: the CIs are then paired (they move together from resample to resample), which
is what a comparison along a curve, or between methods on the same questions, needs; drawing it once per
sample set rather than once per curve also saves the repeated draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

# columns of a per-sample table the resampling reads; latency columns are NaN for simulated sweeps
SAMPLE_VALUES = ["value", "cost_layers", "full_cost_layers", "latency_ms", "full_latency_ms"]
CI_COLUMNS = [f"{s}_{b}" for s in ("value", "expected_speedup", "measured_speedup") for b in ("lo", "hi")]


def resample_counts(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Counts (n_boot, len(strata)) of a two-level bootstrap: the strata (seeds) are drawn with
    replacement, then each drawn seed's samples are drawn with replacement. A seed drawn c times
    contributes c independent Multinomial(N, 1/N) draws, which sum to one Multinomial(c*N, 1/N), so
    no loop over draws is needed. With a single stratum this is the ordinary bootstrap over samples."""
    labels, inverse = np.unique(np.asarray(strata), return_inverse=True)
    k = len(labels)
    if k == 1:
        seed_draws = np.ones((n_boot, 1), dtype=np.int64)
    else:
        seed_draws = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot)
    counts = np.zeros((n_boot, len(inverse)))
    for j in range(k):
        pos = np.flatnonzero(inverse == j)
        counts[:, pos] = rng.multinomial(seed_draws[:, j] * len(pos), np.full(len(pos), 1.0 / len(pos)))
    return counts


def sample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Counts (n_boot, n) of the ordinary bootstrap over n samples (one stratum); (n_boot, 0) when n = 0."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return resample_counts(np.zeros(n), n_boot, rng) if n else np.zeros((n_boot, 0))


def percentile_interval(stats: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of (n_boot, n_points) statistics; NaN where a point has no
    finite resample (e.g. a measured speedup of a simulated point), never an invented number."""
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are expected, they stay NaN
        lo, hi = np.nanquantile(stats, [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_points(
    samples: pd.DataFrame, curve_keys: Sequence[str], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Per (curve_keys, threshold) point: `n_samples` (distinct questions) and the bootstrap CIs of quality (mean value),
    expected speedup (sum full_cost_layers / sum cost_layers) and measured speedup (sum full_latency_ms
    / sum latency_ms). Samples are resampled by sample_id; with a `seed` column holding several seeds,
    seeds are resampled first, then sample_ids within each drawn seed (`resample_counts`)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    rows_index = ["seed", "sample_id"] if "seed" in samples.columns else ["sample_id"]
    out = []
    drawn: dict[tuple, np.ndarray] = {}  # the sample set (its (seed,) sample_id rows) -> its count matrix
    for key, grp in samples.groupby(list(curve_keys), sort=True, dropna=False):
        indexed = grp.set_index(rows_index + ["threshold"])
        if not indexed.index.is_unique:
            dup = indexed.index[indexed.index.duplicated()][0]
            raise ValueError(f"samples has several rows for one (sample, threshold) {dup} of curve {key}")
        wide = indexed[SAMPLE_VALUES].astype(float).unstack("threshold")  # rows: samples, cols: thresholds
        thresholds = wide["value"].columns.to_numpy()
        strata = wide.index.get_level_values("seed") if "seed" in rows_index else np.zeros(len(wide))
        rows_key = tuple(wide.index)
        if rows_key not in drawn:
            drawn[rows_key] = resample_counts(np.asarray(strata), n_boot, rng)
        counts = drawn[rows_key]
        blocks = []
        for num, den in (
            ("value", None),
            ("full_cost_layers", "cost_layers"),
            ("full_latency_ms", "latency_ms"),
        ):
            a = wide[num].to_numpy()
            b = np.ones_like(a) if den is None else wide[den].to_numpy()
            ok = np.isfinite(a) & np.isfinite(b)  # a sample counts only where both parts are known
            blocks += [np.where(ok, a, 0.0), np.where(ok, b, 0.0)]
        sums = counts @ np.hstack(blocks)  # (n_boot, 6 * n_thresholds)
        parts = np.split(sums, 6, axis=1)
        frame = {k: v for k, v in zip(curve_keys, key, strict=True)}
        frame["threshold"] = thresholds
        # questions, not rows: a point simulated for several seeds decoded the same questions each time
        frame["n_samples"] = grp.groupby("threshold")["sample_id"].nunique().reindex(thresholds).to_numpy()
        for name, (num, den) in zip(
            ("value", "expected_speedup", "measured_speedup"),
            zip(parts[::2], parts[1::2], strict=True),
            strict=True,
        ):
            frame[f"{name}_lo"], frame[f"{name}_hi"] = percentile_interval(_ratio(num, den), level)
        out.append(pd.DataFrame(frame))
    if not out:
        raise ValueError("samples is empty")
    return pd.concat(out, ignore_index=True)
