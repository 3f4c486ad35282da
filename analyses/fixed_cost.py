"""Where measured speedup loses to the expected one: the decode's fixed part.

Every decode first runs the vision tower, Q-Former and projection (the prefix); no exit skips them,
and the layer-count estimate does not count them. Live sweeps time the prefix alone beside the full
model (`records.SWEEP_SAMPLES.prefix_ms`), so the loss splits into the prefix's share of the full
model's time, and what remains within the language model (Python and launch overhead, exit checks).
Points are kept apart per decode engine (`engine`, where the table has it): the eager and CUDA-graph
engines time the same threshold against their own full model, so their shares are two rows.
"""

from __future__ import annotations

import pandas as pd

KEYS = ["method", "regime", "kv_policy", "batch_size", "task", "split", "perturbation", "threshold"]
NEEDED = KEYS + ["latency_ms", "full_latency_ms", "prefix_ms", "cost_layers", "full_cost_layers"]
RATIOS = ["prefix_share", "measured_speedup", "expected_speedup", "lm_measured_speedup", "expected_with_prefix",
          "measured_over_expected", "measured_over_expected_with_prefix", "lm_measured_over_expected"]  # fmt: skip


def compute_fixed_share(samples: pd.DataFrame) -> pd.DataFrame:
    """Per timed sweep point: the prefix's share of the full model's time; measured and expected
    speedup; the measured speedup of the LM part alone, (full - prefix) / (early - prefix); and the
    speedup the expected one would give if the prefix were priced as measured,
    full / (prefix + (full - prefix) / expected). Untimed (simulated) points are left out."""
    missing = [c for c in NEEDED if c not in samples.columns]
    if missing:
        raise ValueError(f"samples table lacks columns {missing}")
    # the engine; then the sweep and seed, for sweeps that differ in no key column
    keys = KEYS + [k for k in ("engine", "sweep", "seed") if k in samples.columns]
    timed = samples.dropna(subset=["latency_ms", "full_latency_ms", "prefix_ms"])
    if timed.empty:
        return pd.DataFrame(columns=keys + ["n_samples", *RATIOS])
    groups = timed.groupby(keys, as_index=False, dropna=False)
    sums = groups[NEEDED[len(KEYS) :]].sum()
    full, early, fixed = sums["full_latency_ms"], sums["latency_ms"], sums["prefix_ms"]
    out = sums[keys].copy()
    # the questions behind the point (one row per question and point where the table has no sample_id)
    n = groups["sample_id"].nunique()["sample_id"] if "sample_id" in timed.columns else groups.size()["size"]
    out["n_samples"] = n.to_numpy()
    out["prefix_share"] = fixed / full
    out["measured_speedup"] = full / early
    out["expected_speedup"] = sums["full_cost_layers"] / sums["cost_layers"]
    out["lm_measured_speedup"] = (full - fixed) / (early - fixed)
    out["expected_with_prefix"] = full / (fixed + (full - fixed) / out["expected_speedup"])
    out["measured_over_expected"] = out["measured_speedup"] / out["expected_speedup"]
    out["measured_over_expected_with_prefix"] = out["measured_speedup"] / out["expected_with_prefix"]
    out["lm_measured_over_expected"] = out["lm_measured_speedup"] / out["expected_speedup"]  # after the prefix
    return out.reset_index(drop=True)
