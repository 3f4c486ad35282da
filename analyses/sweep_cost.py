"""What a simulated sweep costs against the teacher-forced pass it rests on (the target: 101
thresholds for at most 1.2x one teacher-forced pass over the split).

Each simulated sweep's manifest records, per task, the seconds of its recording pass (the backbone's
teacher-forced pass with every exit's prediction and confidence read off, `record_s`), of the backbone's
forward alone inside it (`teacher_forced_s`), and of the whole sweep (`sweep_s`: the pass, then every
threshold evaluated offline and written). Both ratios are reported: against the recording pass (what the
thresholds add) and against the backbone's pass (what the exits' own modules add on top).
"""

from __future__ import annotations

import pandas as pd

TARGET = 1.2  # sweep seconds over the recording pass's
COLUMNS = ["sweep", "task", "thresholds", "teacher_forced_s", "record_s", "sweep_s"]


def timing_rows(sweep: str, timings: object) -> list[dict]:
    """The simulated tasks of one sweep manifest's `timings` (live sweeps' entries have no `record_s`)."""
    if not isinstance(timings, dict):
        return []
    return [
        {"sweep": sweep, "task": task, **{k: t.get(k) for k in COLUMNS[2:]}}
        for task, t in timings.items()
        if isinstance(t, dict) and "record_s" in t and "sweep_s" in t
    ]


def compute_sweep_cost(rows: pd.DataFrame) -> pd.DataFrame:
    """Per simulated sweep and task: its seconds, `sweep_over_record`, `sweep_over_teacher_forced`, and
    `within_target` (sweep_over_record <= TARGET). A ratio whose denominator is 0 or missing is NaN."""
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"sweep timings: missing columns {missing}")
    out = rows[COLUMNS].copy()
    for col in COLUMNS[3:]:
        out[col] = pd.to_numeric(out[col], errors="coerce")
    positive = lambda s: s.where(s > 0)  # noqa: E731
    out["sweep_over_record"] = out["sweep_s"] / positive(out["record_s"])
    out["sweep_over_teacher_forced"] = out["sweep_s"] / positive(out["teacher_forced_s"])
    out["within_target"] = out["sweep_over_record"] <= TARGET
    return out.sort_values(["task", "sweep"]).reset_index(drop=True)


def summary(cost: pd.DataFrame) -> str:
    """One sentence per task: how many sweeps are within the target, and the ratios' ranges."""
    parts = []
    for task, d in cost.groupby("task"):
        rec, tf = d["sweep_over_record"].dropna(), d["sweep_over_teacher_forced"].dropna()
        if rec.empty:
            continue
        parts.append(
            f"{task}: {int(d['within_target'].sum())} of {len(d)} sweeps within {TARGET}x their recording "
            f"pass ({rec.min():.2f}-{rec.max():.2f}x; {tf.min():.2f}-{tf.max():.2f}x the backbone's "
            "teacher-forced pass alone)"
        )
    return "; ".join(parts)
