"""The verdict on each of the FREE paper's claims: small pure functions of the report's tables, so tests
can check them on hand-made frames, and `build_claims`, which applies them to what build_report computed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

TARGET_SPEEDUP, SPEEDUP_TOL = 1.5, 0.1  # "about 1.5x": the CI's lower bound (else the point) >= 1.4


def _finite(v: object) -> bool:
    return v is not None and isinstance(v, int | float | np.number) and bool(np.isfinite(v))


UNITS = {"x": (1.0, 2, "x"), "%": (100.0, 1, "%"), "pts": (100.0, 1, " pts"), "": (1.0, 3, "")}


def _ci(row: pd.Series, col: str, unit: str = "") -> str:
    """ "1.23x [1.10, 1.35]" (unit "x"), "21.1% [17.7, 24.6]" ("%"), "1.6 pts [0.0, 5.1]" ("pts"), or the
    point alone when the row has no CI."""
    k, digits, suffix = UNITS[unit]
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    text = f"{k * row[col]:.{digits}f}{suffix}"
    return text + (f" [{k * lo:.{digits}f}, {k * hi:.{digits}f}]" if _finite(lo) and _finite(hi) else "")


def _free(df: pd.DataFrame | None, x: str) -> pd.DataFrame:
    """FREE's rows on clean test (where the frame says), with a finite x."""
    if df is None or df.empty:
        return pd.DataFrame(columns=["method", x])
    d = df[(df["method"] == "free") & np.isfinite(df[x].astype(float))]
    for col, keep in (("split", "test"), ("perturbation", "none")):
        d = d[d[col] == keep] if col in d.columns else d
    return d


def _where(row: pd.Series) -> str:
    timer = row.get("timer", "?")
    parts = [f"{row.get('task', '?')}", f"batch {row.get('batch_size', '?')}"]
    parts += ["simulated" if timer == "none" else f"timer {timer}"]
    return ", ".join(parts + ([f"kv {row['kv_policy']}"] if "kv_policy" in row else []))


def verdict_speedup(
    best_measured: pd.DataFrame | None,
    best_expected: pd.DataFrame | None = None,
    target: float = TARGET_SPEEDUP,
    tol: float = SPEEDUP_TOL,
) -> tuple[str, str]:
    """Claim 1 from `best_at_drop` tables (timed by measured speedup, simulated by expected): FREE's
    fastest point within 1 point of the full model against ~1.5x. Returns (verdict, sentence)."""
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
    if m.empty:
        if exp is None and e.empty:
            return "not measured", "No FREE sweep with a speedup in this results folder."
        verdict = "holds on expected speedup only" if exp_best >= bar else "does not hold"
        return verdict, f"No timed FREE sweep, so no measured speedup. {exp_text} Target: about {target}x."
    ok = m[m["meets_drop"].astype(bool)]
    if ok.empty:
        r = m.loc[m["value"].astype(float).idxmax()]
        text = (
            f"No timed FREE point is within 1 point of the full model: the best ({_where(r)}) scores "
            f"{r['value']:.3f} vs {r['full_value']:.3f} (-{100 * r['drop']:.1f} points) at "
            f"{r['measured_speedup']:.2f}x measured. {exp_text} Target: about {target}x."
        )
        return ("holds on expected speedup only" if exp_best >= bar else "does not hold"), text
    r = ok.loc[ok["measured_speedup"].astype(float).idxmax()]
    lo = r.get("measured_speedup_lo")
    text = (
        f"FREE's best measured speedup within 1 point of the full model is {_ci(r, 'measured_speedup', 'x')} "
        f"({_where(r)}; quality {r['value']:.3f} vs full {r['full_value']:.3f}), expected "
        f"{r['expected_speedup']:.2f}x at the same point{'' if _finite(lo) else ' (no CI: no per-sample data)'}. "
        f"{exp_text} Target: about {target}x (lower bound >= {bar:.1f}x)."
    )
    if (lo if _finite(lo) else r["measured_speedup"]) >= bar:
        return "holds", text
    if r["measured_speedup"] >= bar:
        return "inconclusive", text + " The point reaches the target but its CI does not."
    exp_best = max(exp_best, float(r["expected_speedup"]))
    return ("holds on expected speedup only" if exp_best >= bar else "does not hold"), text


def _bounds(row: pd.Series, col: str) -> tuple[float, float]:
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    return (lo, hi) if _finite(lo) and _finite(hi) else (row[col], row[col])


def _compare(a: pd.Series, b: pd.Series, col: str) -> str:
    """ "lower" / "higher" when the CIs do not overlap (the points where a row has no CI), else "within
    noise"."""
    (a_lo, a_hi), (b_lo, b_hi) = _bounds(a, col), _bounds(b, col)
    if a_hi < b_lo:
        return "lower"
    return "higher" if a_lo > b_hi else "within noise"


def _combine(by_regime: dict[str, str]) -> tuple[str, str]:
    """One verdict when every FREE regime agrees; else "mixed" and a breakdown to append."""
    verdicts = set(by_regime.values())
    if len(verdicts) == 1:
        return verdicts.pop(), ""
    return "mixed", " By FREE regime: " + "; ".join(f"free-{r}: {v}" for r, v in by_regime.items()) + "."


def _overall(pairs: list[str]) -> str:
    if "higher" in pairs:
        return "not lower"
    return pairs[0] if len(set(pairs)) == 1 else "lower than some, within noise of others"


def verdict_overthinking(over: pd.DataFrame | None) -> tuple[str, str]:
    """Claim 3 from `compute_overthinking`: each FREE regime's rate against each baseline's; "lower" or
    "higher" only where the 95% CIs do not overlap, else "within noise"."""
    if over is None or over.empty or not (over["method"] == "free").any():
        return "not measured", "No per-exit test evaluation of FREE exits in this results folder."
    base = over[over["method"] != "free"]
    if base.empty:
        return "not measured", "No baseline per-exit evaluation to compare FREE with."
    by_regime, bits = {}, []
    for _, f in over[over["method"] == "free"].iterrows():
        pairs = [_compare(f, o, "overthinking_rate") for _, o in base.iterrows()]
        by_regime[f["regime"]] = _overall(pairs)
        vs = ", ".join(
            f"{o['method']}-{o['regime']} {_ci(o, 'overthinking_rate', '%')} ({p})"
            for (_, o), p in zip(base.iterrows(), pairs, strict=True)
        )
        bits.append(f"free-{f['regime']} {_ci(f, 'overthinking_rate', '%')} vs {vs}")
    verdict, breakdown = _combine(by_regime)
    text = "Overthinking rate (some earlier exit right, the final layer wrong): " + "; ".join(bits) + "."
    return verdict, text + breakdown


def _has_dip(row: pd.Series) -> bool:
    lo = row.get("dip_lo")
    return bool((lo if _finite(lo) else row["dip"]) > 0)


def verdict_dip(dips: pd.DataFrame | None) -> tuple[str, str]:
    """Claim 2 from the dip table (`compute_dip` + `compute_dip_ci`): a curve dips when its CI's lower
    bound is above 0 (the point when there is no CI). FREE removes the dip when DeeBERT (or, without
    DeeBERT, the logit lens) dips and FREE does not; "reduced, not removed" when both dip but FREE's CI
    is wholly below; "no dip to remove" when the reference does not dip either."""
    if dips is None or dips.empty or not (dips["method"] == "free").any():
        return "not measured", "No per-exit test evaluation of FREE exits in this results folder."
    ref, ref_name = dips[dips["method"] == "deebert"], "DeeBERT"
    if ref.empty:
        ref, ref_name = dips[dips["method"] == "logit_lens"], "the logit lens"
    if ref.empty:
        return "not measured", "Neither DeeBERT exits nor a logit lens to compare FREE's dip with."
    ref_dip = any(_has_dip(r) for _, r in ref.iterrows())
    by_regime = {}
    for _, f in dips[dips["method"] == "free"].iterrows():
        if not _has_dip(f):
            by_regime[f["regime"]] = "holds" if ref_dip else "no dip to remove"
        elif ref_dip and all(_compare(f, r, "dip") == "lower" for _, r in ref.iterrows()):
            by_regime[f["regime"]] = "reduced, not removed"
        else:
            by_regime[f["regime"]] = "does not hold"
    verdict, breakdown = _combine(by_regime)
    shown = "; ".join(f"{r['method']}-{r['regime']} {_ci(r, 'dip', 'pts')}" for _, r in dips.iterrows())
    seen = f"{ref_name} dips" if ref_dip else f"{ref_name} shows no dip here"
    text = "Largest mid-layer drop below the best shallower exit (a dip counts when its CI's lower bound is "
    text += f"above 0; {seen}): {shown}."
    return verdict, text + breakdown


def verdict_robustness(robust: pd.DataFrame | None, missing: str | None = None) -> tuple[str, str]:
    """Claim 4 from `compute_robustness`: mean drop vs clean test over every shift (perturbations and
    test_novel) at the calibrated operating point; FREE holds when its drop is below every baseline's.
    There are no CIs here (the sweep tables hold means only)."""
    if robust is None or robust.empty:
        return "not measured", f"No robustness data: {missing or 'no perturbed sweeps'}."
    metric = "vqa_accuracy" if (robust["metric"] == "vqa_accuracy").any() else robust["metric"].iloc[0]
    d = robust[(robust["metric"] == metric) & ((robust["split"] == "test_novel") | (robust["severity"] > 0))]
    drops = d.groupby(["method", "regime"])["drop_vs_clean"].mean()
    free = drops[drops.index.get_level_values(0) == "free"]
    base = drops[drops.index.get_level_values(0) != "free"]
    if free.empty or base.empty:
        return "not measured", f"Shifted {metric} rows lack FREE or a baseline at the operating point."
    by_regime = {r: "holds" if v < base.min() else "does not hold" for (_, r), v in free.items()}
    verdict, breakdown = _combine(by_regime)
    shown = "; ".join(f"{m}-{r} {100 * v:.1f} pts" for (m, r), v in drops.items())
    return verdict, f"Mean {metric} drop vs clean test under shift (no CI): {shown}.{breakdown}"


def build_claims(
    tables: Mapping[str, pd.DataFrame], missing: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for each claim, from build_report's tables and missing parts."""
    t = tables
    return [
        ("About 1.5x speedup at comparable quality",)
        + verdict_speedup(t.get("speedup_best_measured"), t.get("speedup_best_expected")),
        ("FREE removes the mid-crisis dip",) + verdict_dip(t.get("midcrisis_dip")),
        ("FREE reduces overthinking",) + verdict_overthinking(t.get("overthinking")),
        ("FREE is more robust",) + verdict_robustness(t.get("robustness"), missing.get("robustness")),
    ]
