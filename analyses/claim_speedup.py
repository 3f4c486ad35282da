"""Claim 1, "about 1.5x speedup at comparable quality": the verdict from the report's best-at-drop tables.
Measured speedups of different decode engines are judged apart, never pooled. Where the tables say against
which full model (`baseline`), the verdict rests on the fastest full model timed in the run, the same
baseline for every engine (`analyses.fastest`); otherwise each engine is against its own full model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.fastest import FASTEST
from analyses.fmt import ci as _ci
from analyses.fmt import finite as _finite

TARGET_SPEEDUP, SPEEDUP_TOL = 1.5, 0.1  # "about 1.5x": the CI's lower bound (else the point) >= 1.4


def _free(df: pd.DataFrame | None, x: str) -> pd.DataFrame:
    """FREE's early-exit rows on clean test (where the frame says), with a finite x. Speculative rows
    (engine "<engine>-speculative": lossless, the full model's answers) have their own target
    (`analyses.speculative`) and are left out."""
    if df is None or df.empty:
        return pd.DataFrame(columns=["method", x])
    d = df[(df["method"] == "free") & np.isfinite(df[x].astype(float))]
    if "engine" in d.columns:
        d = d[~d["engine"].astype(str).str.endswith("-speculative")]
    for col, keep in (("split", "test"), ("perturbation", "none")):
        d = d[d[col] == keep] if col in d.columns else d
    return d


def _where(row: pd.Series) -> str:
    timer = row.get("timer", "?")
    parts = [f"{row.get('task', '?')}", f"batch {row.get('batch_size', '?')}"]
    parts += ["simulated" if timer == "none" else f"timer {timer}"]
    parts += [f"engine {row['engine']}"] if timer != "none" and "engine" in row else []
    return ", ".join(parts + ([f"kv {row['kv_policy']}"] if "kv_policy" in row else []))


# how strongly a verdict supports the claim: the verdict over several engines rests on the strongest
STRENGTH = {"holds": 3, "inconclusive": 2, "holds on expected speedup only": 1, "does not hold": 0}


def _measured_verdict(m: pd.DataFrame, exp_best: float, bar: float) -> tuple[str, str, str, float, pd.Series]:
    """The verdict from FREE's timed rows `m` of one engine: (verdict, sentence, what to append after the
    target, best measured speedup within the drop or -inf, the row it rests on)."""
    ok = m[m["meets_drop"].astype(bool)]
    if ok.empty:
        r = m.loc[m["value"].astype(float).idxmax()]
        text = (
            f"No timed FREE point is within 1 point of the full model: the best ({_where(r)}) scores "
            f"{r['value']:.3f} vs {r['full_value']:.3f} (-{100 * r['drop']:.1f} points) at "
            f"{r['measured_speedup']:.2f}x measured."
        )
        verdict = "holds on expected speedup only" if exp_best >= bar else "does not hold"
        return verdict, text, "", -np.inf, r
    r = ok.loc[ok["measured_speedup"].astype(float).idxmax()]
    lo, speed = r.get("measured_speedup_lo"), float(r["measured_speedup"])
    text = (
        f"FREE's best measured speedup within 1 point of the full model is {_ci(r, 'measured_speedup', 'x')} "
        f"({_where(r)}; quality {r['value']:.3f} vs full {r['full_value']:.3f}), expected "
        f"{r['expected_speedup']:.2f}x at the same point{'' if _finite(lo) else ' (no CI: no per-sample data)'}."
    )
    if (lo if _finite(lo) else speed) >= bar:
        return "holds", text, "", speed, r
    if speed >= bar:
        return "inconclusive", text, " The point reaches the target but its CI does not.", speed, r
    exp_best = max(exp_best, float(r["expected_speedup"]))
    return ("holds on expected speedup only" if exp_best >= bar else "does not hold"), text, "", speed, r


def _against(m: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """FREE's timed rows the verdict rests on, and against which full model they are. Where the rows carry
    a `baseline`, those against the fastest full model of the run (`analyses.fastest`) when there are any;
    the ratios against each engine's own full model are the labelled reference, not the verdict."""
    if "baseline" not in m.columns:
        return m, "each against the full model timed through the same engine"
    fastest = m[m["baseline"].astype(str).str.startswith(FASTEST)]
    if fastest.empty:
        return m, ("each against the full model timed through the same engine (no per-question times to set "
                   "them against the fastest full model)")  # fmt: skip
    labels = ", ".join(sorted(fastest["baseline"].astype(str).unique()))
    return fastest, (f"against the {labels} timed in this run at batch 1, question by question (ratios "
                     "against each engine's own full model: tables/speedup_best_measured.csv, `baseline`)")  # fmt: skip


def judge_speedup(
    best_measured: pd.DataFrame | None,
    best_expected: pd.DataFrame | None = None,
    target: float = TARGET_SPEEDUP,
    tol: float = SPEEDUP_TOL,
) -> tuple[str, str, pd.Series | None]:
    """`verdict_speedup`'s (verdict, sentence) and the timed row the verdict rests on (None without one)."""
    bar = target - tol
    m, e = _free(best_measured, "measured_speedup"), _free(best_expected, "expected_speedup")
    e_ok = e[e["meets_drop"].astype(bool)] if len(e) else e
    exp = e_ok.loc[e_ok["expected_speedup"].astype(float).idxmax()] if len(e_ok) else None
    exp_text = (
        f"Simulated sweeps: FREE's best expected (layer-count) speedup within 1 point is "
        f"{exp['expected_speedup']:.2f}x ({_where(exp)})."
        if exp is not None
        else "No simulated FREE point is within 1 point of the full model."
        if len(e)
        else "No simulated FREE sweep."
    )
    exp_best = float(exp["expected_speedup"]) if exp is not None else -np.inf
    target_text = f"Target: about {target}x"
    if m.empty:
        if exp is None and e.empty:
            return "not measured", "No FREE sweep with a speedup in this results folder.", None
        verdict = "holds on expected speedup only" if exp_best >= bar else "does not hold"
        return verdict, f"No timed FREE sweep, so no measured speedup. {exp_text} {target_text}.", None
    m, against = _against(m)
    engines = sorted(m["engine"].astype(str).unique()) if "engine" in m.columns else []
    if len(engines) <= 1:
        verdict, text, after, speed, row = _measured_verdict(m, exp_best, bar)
        bound = f" (lower bound >= {bar:.1f}x)" if np.isfinite(speed) else ""
        lead = f"Measured {against}: " if "baseline" in m.columns else ""
        return verdict, f"{lead}{text} {exp_text} {target_text}{bound}.{after}", row
    judged = {g: _measured_verdict(m[m["engine"].astype(str) == g], exp_best, bar) for g in engines}
    best = max(engines, key=lambda g: (STRENGTH[judged[g][0]], judged[g][3]))
    verdict, text, after, _, row = judged[best]
    others = " ".join(
        f"Beside it, the {g} engine ({judged[g][0]}): {judged[g][1]}{judged[g][2]}"
        for g in engines
        if g != best
    )
    return verdict, (
        f"Measured per decode engine ({', '.join(engines)}), {'all ' if against.startswith('against') else ''}{against}; "
        f"the verdict rests on the {best} "
        f"engine, the strongest: {text}{after} {others} {exp_text} {target_text} (lower bound >= {bar:.1f}x)."
    ), row


def verdict_speedup(
    best_measured: pd.DataFrame | None,
    best_expected: pd.DataFrame | None = None,
    target: float = TARGET_SPEEDUP,
    tol: float = SPEEDUP_TOL,
) -> tuple[str, str]:
    """Claim 1 from `best_at_drop` tables (timed by measured speedup, simulated by expected): FREE's
    fastest point within 1 point of the full model against ~1.5x. Returns (verdict, sentence). Timed
    rows of several decode engines (`engine`) are judged per engine, never pooled; the verdict rests on
    the engine whose verdict is strongest (then whose speedup is highest), and the sentence gives the
    other engines' beside it. Where the rows carry a `baseline`, the verdict rests on the speedups
    against the fastest full model of the run, all engines against one baseline (`analyses.fastest`)."""
    verdict, sentence, _ = judge_speedup(best_measured, best_expected, target, tol)
    return verdict, sentence
