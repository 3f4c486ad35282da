"""The verdict on each of the FREE paper's claims: small pure functions of the report's tables, so tests
can check them on hand-made frames, and `build_claims`, which applies them to what build_report computed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analyses.claim_speedup import SPEEDUP_TOL, TARGET_SPEEDUP, verdict_speedup
from analyses.fmt import UNITS
from analyses.fmt import ci as _ci
from analyses.fmt import finite as _finite
from analyses.guarantees import verdict_compute_robustness

__all__ = ["SPEEDUP_TOL", "TARGET_SPEEDUP", "UNITS", "build_claims", "verdict_dip", "verdict_overthinking",
           "verdict_robustness", "verdict_speedup"]  # fmt: skip


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


def _label(method: str, regime: str) -> str:
    return "full model" if method == "full" else f"{method}-{regime}"


def _robustness_ci_verdict(ci: pd.DataFrame, robust: pd.DataFrame | None) -> tuple[str, str] | None:
    """Claim 4 from `compute_robustness_ci`, or None when the table lacks FREE or a baseline."""
    task = "vqa" if (ci["task"] == "vqa").any() else sorted(ci["task"].unique())[0]
    d = ci[ci["task"] == task]
    free = d[d["method"] == "free"].drop_duplicates(["regime"])
    base = d[~d["method"].isin(["free", "full", "oracle"])]
    if free.empty or base.empty:
        return None
    names = set(zip(base["method"], base["regime"], strict=True))
    if robust is not None and not robust.empty and {"task", "method", "regime", "severity"} <= set(robust):
        shifted = robust[(robust["task"] == task) & (robust["severity"] > 0)]
        shifted = shifted[~shifted["method"].isin(["free", "full", "oracle"])]
        names |= set(zip(shifted["method"], shifted["regime"], strict=True))  # a baseline with no samples
    by_regime, diffs = {}, []
    for f in free["regime"]:
        vs = base[base["vs_free"] == f].set_index(["method", "regime"])
        lo, hi = vs["diff_lo"].astype(float), vs["diff_hi"].astype(float)
        if (hi < 0).any():
            by_regime[f] = "does not hold"
        elif len(vs) == len(names) and (lo > 0).all():
            by_regime[f] = "holds"
        elif all(n in vs.index for n in names) and np.isfinite(lo).all() and np.isfinite(hi).all():
            by_regime[f] = "within noise"
        else:
            by_regime[f] = "inconclusive (no per-sample data for every baseline)"
        diffs += [f"{_label(m, r)} - free-{f} {_ci(row, 'diff', 'pts')}" for (m, r), row in vs.iterrows()]
        diffs += [f"{_label(*n)} - free-{f}: no per-sample data" for n in sorted(names - set(vs.index))]
    verdict, breakdown = _combine(by_regime)
    own = d.drop_duplicates(["method", "regime"])
    n = int(own["n_samples"].max())
    drops = "; ".join(
        f"{_label(r['method'], r['regime'])} {_ci(r, 'drop', 'pts')}" for _, r in own.iterrows()
    )
    novel = own[own["novel_n"] > 0]
    text = (
        f"Mean {own['metric'].iloc[0]} drop vs clean test over {int(own['n_shifts'].max())} perturbation x "
        f"severity shifts of the same {n} test questions, paired by question (bootstrap CI over questions, "
        f"resampled alike for every method): {drops}. Baseline drop minus FREE drop, paired (above 0: FREE "
        f"drops less; the claim holds when every CI is above 0): {'; '.join(diffs)}."
    )
    if len(novel):
        shown = "; ".join(
            f"{_label(r['method'], r['regime'])} {_ci(r, 'novel_drop', 'pts')}" for _, r in novel.iterrows()
        )
        text += (
            f" test_novel ({int(novel['novel_n'].max())} other questions, so unpaired and left out of the "
            f"verdict), drop vs clean test: {shown}."
        )
    return verdict, text + breakdown


def verdict_robustness(
    robust: pd.DataFrame | None,
    missing: str | None = None,
    ci: pd.DataFrame | None = None,
    ci_missing: str | None = None,
) -> tuple[str, str]:
    """Claim 4. From `compute_robustness_ci` (`ci`), per FREE regime: "holds" when the CI of every
    baseline's drop minus FREE's (paired over the same questions, every perturbation x severity) lies
    above 0, "does not hold" when one lies below 0, else "within noise"; "mixed" when regimes disagree.
    Without per-sample CIs only the mean drops of `compute_robustness` are shown (perturbations and
    test_novel), and the verdict is "inconclusive (no per-sample data)": never "holds" without CIs."""
    if ci is not None and not ci.empty and (judged := _robustness_ci_verdict(ci, robust)) is not None:
        return judged
    if robust is None or robust.empty:
        return "not measured", f"No robustness data: {missing or 'no perturbed sweeps'}."
    metric = "vqa_accuracy" if (robust["metric"] == "vqa_accuracy").any() else robust["metric"].iloc[0]
    d = robust[(robust["metric"] == metric) & ((robust["split"] == "test_novel") | (robust["severity"] > 0))]
    drops = d.groupby(["method", "regime"])["drop_vs_clean"].mean()
    free = drops[drops.index.get_level_values(0) == "free"]
    base = drops[drops.index.get_level_values(0) != "free"]
    if free.empty or base.empty:
        return "not measured", f"Shifted {metric} rows lack FREE or a baseline at the operating point."
    shown = "; ".join(f"{m}-{r} {100 * v:.1f} pts" for (m, r), v in drops.items())
    lower = "below" if (free < base.min()).all() else "not below"
    why = ci_missing or "no per-sample data"
    return "inconclusive (no per-sample data)", (
        f"Mean {metric} drop vs clean test under shift, perturbations and test_novel (no CI: {why}): "
        f"{shown}. FREE's mean drop is {lower} every baseline's, but without CIs that is no verdict."
    )


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
        ("FREE is more robust",)
        + verdict_robustness(
            t.get("robustness"),
            missing.get("robustness"),
            t.get("robustness_drop_ci"),
            missing.get("robustness_drop_ci"),
        ),
        ("FREE is more robust (compute: speedup kept under a slowdown attack)",)
        + verdict_compute_robustness(t.get("attack"), t.get("attack_ci"), missing.get("attack")),
    ]
