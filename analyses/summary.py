"""The report's summary: each method's best point in one table, and each claim's headline number with its
CI (the verdicts themselves come from `analyses.claims`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analyses.claim_speedup import judge_speedup
from analyses.fastest import FASTEST
from analyses.fmt import ci
from analyses.speedup import pick_at_drop

WHO = ["method", "regime", "task", "metric"]  # one summary row per these
REFERENCE = ("full", "oracle")


def _clean(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or df.empty:
        return pd.DataFrame()
    d = df[~df["method"].isin(REFERENCE)]
    for col, keep in (("split", "test"), ("perturbation", "none")):
        d = d[d[col] == keep] if col in d.columns else d
    return d


def compute_best_points(
    best_measured: pd.DataFrame | None, best_expected: pd.DataFrame | None, max_drop: float
) -> pd.DataFrame:
    """Per method, regime, task and metric on clean test: the fastest timed point within `max_drop` of
    the full model (else the best-quality one, `meets_drop` False), over engines, KV policies and
    thresholds, against the fastest full model where `best_measured` has that `baseline` for it (batch
    1); a method timed only otherwise (batched, or without per-question times) against its engine's own
    full model, as `baseline` says; a method with simulated sweeps only gets its best expected point,
    measured speedup missing and `baseline` "not timed"."""
    timed = _clean(best_measured)
    if len(timed) and "baseline" in timed.columns:
        fastest = timed["baseline"].astype(str).str.startswith(FASTEST)
        timed = pd.concat([timed[fastest], _unseen(timed[~fastest], timed[fastest])], ignore_index=True)
    picked = pick_at_drop(timed, WHO, "measured_speedup", max_drop) if len(timed) else pd.DataFrame()
    sim = _clean(best_expected)
    if len(sim):
        sim = _unseen(pick_at_drop(sim, WHO, "expected_speedup", max_drop), picked)
        sim = sim.assign(measured_speedup=np.nan, measured_speedup_lo=np.nan, measured_speedup_hi=np.nan,
                         baseline="not timed (simulated sweeps only)", engine="none")  # fmt: skip
    out = pd.concat([d for d in (picked, sim) if len(d)], ignore_index=True) if len(picked) + len(sim) else None
    if out is None:
        raise ValueError("no method point on clean test to summarise")
    cols = WHO + ["value", "value_lo", "value_hi", "full_value", "drop", "meets_drop", "measured_speedup",
                  "measured_speedup_lo", "measured_speedup_hi", "expected_speedup", "engine", "kv_policy",
                  "batch_size", "threshold", "n_samples", "baseline"]  # fmt: skip
    for c in cols:
        if c not in out.columns:
            out[c] = pd.NA if c in ("n_samples", "baseline") else np.nan
    return out[cols].sort_values(WHO).reset_index(drop=True)


def _unseen(rows: pd.DataFrame, seen: pd.DataFrame) -> pd.DataFrame:
    """The rows of `rows` whose method, regime, task and metric `seen` has none of."""
    if rows.empty or seen.empty:
        return rows
    return rows[~pd.MultiIndex.from_frame(rows[WHO]).isin(pd.MultiIndex.from_frame(seen[WHO]))]


def _who(row: pd.Series) -> str:
    if row.get("method") == "full":
        return "full model"
    return f"{row['method']}-{row['regime']}" if "regime" in row else str(row["method"])


def headline_speedup(best_measured: pd.DataFrame | None, best_expected: pd.DataFrame | None) -> str:
    """The point claim 1's verdict rests on, with its CI and baseline."""
    _, _, row = judge_speedup(best_measured, best_expected)
    if row is None:
        return ""
    against = row.get("baseline", f"own engine ({row.get('engine', '?')})")
    return (f"{_who(row)} {ci(row, 'measured_speedup', 'x')} measured, {row['expected_speedup']:.2f}x expected "
            f"({row.get('engine', '?')} engine, {row.get('task', '?')} batch {row.get('batch_size', '?')}, "
            f"quality {row['value']:.3f} vs {row['full_value']:.3f}; against the {against})")  # fmt: skip


def _rows(df: pd.DataFrame | None, col: str, unit: str, methods: tuple[str, ...] | None = None) -> str:
    if df is None or df.empty or col not in df.columns:
        return ""
    d = df if methods is None else df[df["method"].isin(methods)]
    return "; ".join(f"{_who(r)} {ci(r, col, unit)}" for _, r in d.iterrows() if np.isfinite(float(r[col])))


def claim_headlines(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """One short string per claim (in `build_claims`'s order): the numbers its verdict rests on, with CIs;
    "" where there are none."""
    t = tables
    diffs = t.get("robustness_drop_ci")
    if diffs is not None and "diff" in diffs.columns:
        diffs = diffs[diffs["diff"].notna()].assign(
            method=lambda d: d["method"] + "-" + d["regime"] + " - free", regime=lambda d: d["vs_free"]
        )
    attack = t.get("attack")
    if attack is not None and len(attack) and "attack_ci" in t:
        attack = attack.merge(t["attack_ci"], on="run", how="left").assign(method=lambda d: d["run"])
        attack = attack.drop(columns="regime", errors="ignore")
    return [
        headline_speedup(t.get("speedup_best_measured"), t.get("speedup_best_expected")),
        _titled("dip", _rows(t.get("midcrisis_dip"), "dip", "pts")),
        _titled("overthinking rate", _rows(t.get("overthinking"), "overthinking_rate", "%")),
        _titled("drop under shift minus FREE's, paired:", _rows(diffs, "diff", "pts")),
        _titled("share of the expected speedup's gain taken:", _rows(attack, "speedup_taken", "%")),
    ]


def _titled(title: str, text: str) -> str:
    return f"{title} {text}" if text else ""
