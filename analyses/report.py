"""REPORT.md for one results folder: every table (CSV in tables/), every figure (PNG + PDF in figures/) and
a plain verdict on each of the FREE paper's claims, computed from the numbers and their CIs.

A part whose inputs are absent is reported as missing, with the reason; no number is ever invented for
it. Usage: `python -m analyses.report results/<profile>`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from analyses import figures
from analyses.load import Results, load_results, write_csv, write_text
from analyses.midcrisis import compute_dip, compute_dip_ci, compute_layer_curves
from analyses.overthinking import compute_overthinking, compute_overthinking_by_layer
from analyses.robustness import CAL, calibrate, compute_robustness
from analyses.speedup import KEYS, best_at_drop, collapse_points, compute_auc, compute_curves

MAX_DROP = 0.01  # "comparable quality": at most 1 point of VQA accuracy (or 0.01 CIDEr) below the full model
OUTPUT_EXTS = (".csv", ".png", ".pdf")


class Built:
    """What build_report made: tables and figures by name, and why each missing part is missing."""

    def __init__(self, res: Results, n_boot: int, seed: int) -> None:
        self.res, self.n_boot, self.seed = res, n_boot, seed
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, Path] = {}
        self.missing: dict[str, str] = {}
        self.claims: list[tuple[str, str, str]] = []

    def attempt(self, part: str, fn: Callable[..., None], *args: object) -> None:
        """Run one part; a ValueError from the analyses marks the part missing with its message."""
        try:
            fn(self, *args)
        except ValueError as err:
            self.missing.setdefault(part, f"not computed: {err}")


def extra_keys_for(sweep: pd.DataFrame) -> list[str]:
    """`timer` always; then `compact`, then the sweep folder, added only while points would collide."""
    keys = ["timer"]
    for extra in ("compact", "sweep"):
        try:
            collapse_points(sweep, keys)
            return keys
        except ValueError as err:
            if "repeats" not in str(err):
                raise
            keys.append(extra)
    return keys


def label_seeds(per_exit: pd.DataFrame) -> pd.DataFrame:
    """Where one method-regime has several training seeds, tell them apart as regime "-s<seed>"."""
    if "seed" not in per_exit.columns:
        return per_exit
    n = per_exit.groupby(["method", "regime"])["seed"].transform("nunique")
    tagged = per_exit["regime"].astype(str) + "-s" + per_exit["seed"].astype(str)
    return per_exit.assign(regime=per_exit["regime"].where(n <= 1, tagged))


def clean_test(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["split"] == "test") & (df["perturbation"] == "none")]


def _speedup(b: Built) -> None:
    sweep, samples = b.res.sweep, b.res.samples
    if sweep is None:
        b.missing["speedup"] = "no sweeps (sweeps/<name>/sweep.parquet) in this results folder"
        return
    extra = extra_keys_for(sweep)
    if samples is not None:  # every sweep repeats the full model: keep one copy of its samples
        ids = [*KEYS, "threshold", "sample_id", "seed", *[k for k in extra if k in samples.columns]]
        samples = samples[~(samples["method"].isin(["full", "oracle"]) & samples.duplicated(ids))]
    try:
        curves = compute_curves(sweep, samples, n_boot=b.n_boot, seed=b.seed, extra_keys=extra)
    except ValueError as err:  # unusable per-sample tables cost the CIs, not the curves
        if samples is None:
            raise
        b.res.notes.append(f"samples.parquet not used, so no speedup CIs: {err}")
        curves = compute_curves(sweep, None, extra_keys=extra)
    b.tables["speedup_curves"] = curves
    timed = curves[curves["timer"] != "none"]
    simulated = curves[curves["timer"] == "none"]
    has_measured = np.isfinite(timed["measured_speedup"].astype(float)) & ~timed["method"].isin(["full"])
    if has_measured.any():
        best = best_at_drop(timed, MAX_DROP, "measured_speedup", extra)
        b.tables["speedup_best_measured"] = best.assign(
            measured_over_expected=best["measured_speedup"] / best["expected_speedup"]
        )
        b.attempt("speedup_auc_measured", _auc, timed, "measured_speedup", extra)
    else:
        b.missing["speedup_best_measured"] = "no timed sweep (every sweep has timer 'none')"
    if len(simulated):
        b.tables["speedup_best_expected"] = best_at_drop(simulated, MAX_DROP, "expected_speedup", extra)
    else:
        b.missing["speedup_best_expected"] = "no simulated sweep (timer 'none')"
    b.attempt("speedup_auc_expected", _auc, curves, "expected_speedup", extra)
    devices = sweep.groupby("timer")["device"].agg(lambda s: ", ".join(sorted(s.astype(str).unique())))
    b.figures |= figures.speedup_figures(curves, b.res.root / "figures", b.res.profile, devices.to_dict())


def _auc(b: Built, curves: pd.DataFrame, x: str, extra: list[str]) -> None:
    b.tables[f"speedup_auc_{x.split('_')[0]}"] = compute_auc(clean_test(curves), x, extra_keys=extra)


def _per_exit_parts(b: Built) -> None:
    test = b.res.per_exit.get("test")
    if test is None:
        reason = "no exits/<run>/per_exit_test.parquet in this results folder"
        for part in ("exits", "overthinking", "midcrisis"):
            b.missing[part] = reason
        return
    pe = label_seeds(test)
    b.attempt("exits", _exits, pe)
    b.attempt("overthinking", _overthinking, pe)
    b.attempt("midcrisis", _midcrisis, pe)


def _exits(b: Built, pe: pd.DataFrame) -> None:
    exits = pe[pe["exit_kind"] == "exit"].pivot_table(
        index=["method", "regime"], columns="layer", values="accuracy", aggfunc="mean"
    )
    exits.columns = [f"L{c}" for c in exits.columns]
    final = pe[pe["exit_kind"] == "final"].groupby(["method", "regime"])["accuracy"].mean()
    b.tables["exits_accuracy_test"] = exits.assign(final=final).reset_index()
    cap = b.res.caption_scores
    if cap is not None:
        cap = label_seeds(cap[(cap["split"] == "test") & (cap["metric"] == "CIDEr")])
        scored = cap[cap["value"].notna()]
        if len(scored):
            wide = scored.pivot_table(index=["method", "regime"], columns="layer", values="value")
            wide.columns = [f"L{c}" for c in wide.columns]
            b.tables["exits_cider_test"] = wide.reset_index()
        unscored = cap.groupby(["method", "regime"])["value"].count().loc[lambda n: n == 0]
        if len(unscored):
            reasons = cap["missing"].dropna().unique() if "missing" in cap else []
            runs = ", ".join(f"{m}-{r}" for m, r in unscored.index)
            b.missing["exits_cider_test"] = f"{runs}: {reasons[0] if len(reasons) else 'no CIDEr values'}"


def _overthinking(b: Built, pe: pd.DataFrame) -> None:
    b.tables["overthinking"] = compute_overthinking(pe, n_boot=b.n_boot, seed=b.seed)
    by_layer = compute_overthinking_by_layer(pe)
    b.tables["overthinking_by_layer"] = by_layer
    b.figures["overthinking_by_layer"] = figures.overthinking_figure(
        by_layer, b.res.root / "figures", b.res.profile
    )


def _midcrisis(b: Built, pe: pd.DataFrame) -> None:
    lens_dict = (b.res.quality or {}).get("logit_lens")
    lens = None
    if lens_dict:
        lens = pd.DataFrame({"layer": [int(k) for k in lens_dict], "accuracy": list(lens_dict.values())})
    else:
        b.missing["logit_lens"] = "backbone/quality.json has no logit_lens"
    curves = compute_layer_curves(pe, lens, n_boot=b.n_boot, seed=b.seed)
    ci = compute_dip_ci(pe, n_boot=b.n_boot, seed=b.seed)
    dips = compute_dip(curves).merge(ci.drop(columns="dip"), on=["method", "regime"], how="left")
    b.tables["midcrisis_layers"], b.tables["midcrisis_dip"] = curves, dips
    b.figures["midcrisis_layers"] = figures.midcrisis_figure(curves, b.res.root / "figures", b.res.profile)


def _robustness(b: Built) -> None:
    """Shifted inputs at each method's operating point. The sweeps holding shifted rows (reproduce's
    `robustness` sweep: one threshold per method, clean test beside the shifts at the same rows and
    batch) name the operating point themselves; otherwise it is calibrated on clean val."""
    sweep = b.res.sweep
    if sweep is None:
        b.missing["robustness"] = "no sweeps in this results folder"
        return
    shifted = (sweep["perturbation"] != "none") | (sweep["split"] == "test_novel")
    if not shifted.any():
        b.missing["robustness"] = "no perturbed or test_novel sweeps in this results folder"
        return
    rows = sweep[sweep["sweep"].isin(sweep.loc[shifted, "sweep"].unique())]
    points = rows[rows["method"] != "full"]
    if points.groupby(CAL)["threshold"].nunique().max() == 1:
        operating = points.groupby(CAL, as_index=False)["threshold"].first()
    else:  # shifted sweeps over a grid: one kind of sweep (simulated where there are any), one batch size
        rows = sweep[sweep["timer"] == "none"] if (sweep.loc[shifted, "timer"] == "none").any() else sweep
        rows = rows[rows["batch_size"] == rows["batch_size"].min()]
        if not ((rows["split"] == "val") & (rows["perturbation"] == "none")).any():
            b.missing["robustness"] = "no clean val sweep to calibrate the operating point on"
            return
        operating = calibrate(rows, MAX_DROP)
    robust = compute_robustness(rows, operating)
    b.tables["robustness_operating"], b.tables["robustness"] = operating, robust
    metric = "vqa_accuracy" if (robust["metric"] == "vqa_accuracy").any() else robust["metric"].iloc[0]
    fig = figures.robustness_figure(robust, b.res.root / "figures", b.res.profile, metric)
    if fig is not None:
        b.figures["robustness_heatmap"] = fig


# ---- verdicts: small pure functions of the tables above, so tests can check them on hand-made frames ----

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


def _claims(b: Built) -> None:
    t = b.tables
    b.claims = [
        ("About 1.5x speedup at comparable quality",)
        + verdict_speedup(t.get("speedup_best_measured"), t.get("speedup_best_expected")),
        ("FREE removes the mid-crisis dip",) + verdict_dip(t.get("midcrisis_dip")),
        ("FREE reduces overthinking",) + verdict_overthinking(t.get("overthinking")),
        ("FREE is more robust",) + verdict_robustness(t.get("robustness"), b.missing.get("robustness")),
    ]
    b.tables["claims"] = pd.DataFrame(b.claims, columns=["claim", "verdict", "evidence"])


def _backbone_tables(b: Built) -> None:
    q = b.res.quality or {}
    if by_type := q.get("vqa_accuracy_by_type"):
        b.tables["backbone_vqa_by_type"] = pd.DataFrame(
            {"question_type": list(by_type), "vqa_accuracy": list(by_type.values())}
        )
    if lens := q.get("logit_lens"):
        b.tables["backbone_logit_lens"] = pd.DataFrame(
            {"layer": [int(k) for k in lens], "accuracy": list(lens.values())}
        )


def _remove_stale(folder: Path, keep: set[Path]) -> None:
    """tables/ and figures/ belong to the report: drop outputs of an earlier run that this run did not make."""
    for f in folder.glob("*"):
        if f.is_file() and f.suffix in OUTPUT_EXTS and f not in keep and not f.name.startswith("."):
            f.unlink()


# ---- REPORT.md ----


def _fmt(v: object) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "n/a" if v is None or v is pd.NA else str(v)


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table; NaN is written "n/a", never 0."""
    rows = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * df.shape[1], *rows])


def _with_ci(df: pd.DataFrame, cols: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Add a "value [lo, hi]" string column per {col: (name, unit)} (units as in `_ci`)."""
    out = df.copy()
    for col, (name, unit) in cols.items():
        out[name] = [_ci(r, col, unit) for _, r in df.iterrows()]
    return out


def _missing(b: Built, part: str) -> list[str]:
    return [f"**missing**: {b.missing[part]}", ""] if part in b.missing else []


def _figure(b: Built, name: str, caption: str) -> list[str]:
    return [f"![{caption}](figures/{name}.png) ([pdf](figures/{name}.pdf))", ""] if name in b.figures else []


def _backbone(b: Built) -> list[str]:
    q = b.res.quality
    if q is None:
        return ["**missing**: backbone/quality.json is not in this results folder", ""]
    acc = q.get("vqa_accuracy")
    out = [f"VQA accuracy ({q.get('split', '?')} split, {q.get('vqa_rows', '?')} questions): {_fmt(acc)}", ""]
    if "backbone_vqa_by_type" in b.tables:
        out += [md_table(b.tables["backbone_vqa_by_type"]), ""]
    if "backbone_logit_lens" in b.tables:
        lens = b.tables["backbone_logit_lens"].set_index("layer")["accuracy"]
        wide = pd.DataFrame([lens.to_numpy()], columns=[f"L{c}" for c in lens.index])
        out += ["Logit lens (final norm + LM head on each layer's hidden state), VQA accuracy:", ""]
        out += [md_table(wide), ""]
    else:
        out += ["Logit lens: **missing** (quality.json has no logit_lens)", ""]
    caps = q.get("captions", q.get("caption_scores"))
    if not isinstance(caps, dict) or "missing" in caps:
        reason = caps.get("missing") if isinstance(caps, dict) else "not in quality.json"
        out += [f"Caption scores: **missing** ({reason})", ""]
    else:
        out += ["Caption scores:", "", md_table(pd.DataFrame([caps])), ""]
    return out


def _exits_md(b: Built) -> list[str]:
    out = _missing(b, "exits")
    if "exits_accuracy_test" in b.tables:
        out += ["Per-exit VQA accuracy on test (teacher-forced, every exit evaluated):", ""]
        out += [md_table(b.tables["exits_accuracy_test"]), ""]
    if "exits_cider_test" in b.tables:
        out += ["Per-exit CIDEr on test:", "", md_table(b.tables["exits_cider_test"]), ""]
    if "exits_cider_test" in b.missing:
        out += [f"Per-exit CIDEr: **missing** ({b.missing['exits_cider_test']})", ""]
    if "exits_training" in b.tables:
        out += ["Training time per exits run (seconds):", "", md_table(b.tables["exits_training"]), ""]
    return out


def _speedup_md(b: Built) -> list[str]:
    if "speedup" in b.missing:
        return _missing(b, "speedup")
    out = [
        f"Best point per curve at most {100 * MAX_DROP:.0f} point below the full model on the same setting "
        "(meets_drop = no: no point qualifies, the best-quality point is shown). Measured speedup is "
        "wall-clock against the faster full model in the same run; expected speedup counts layers, exits "
        "included. Clean test split; all splits are in tables/.",
        "",
    ]
    for name in sorted(n for n in b.figures if n.startswith("speedup_")):
        out += _figure(b, name, name.replace("_", " "))
    cols = ["method", "regime", "kv_policy", "batch_size", "task", "metric", "timer", "threshold", "value"]
    cols += ["full_value", "drop", "meets_drop"]
    for name, title, ci in (
        (
            "speedup_best_measured",
            "Timed sweeps: best measured speedup",
            ("measured_speedup", "expected_speedup"),
        ),
        ("speedup_best_expected", "Simulated sweeps: best expected speedup", ("expected_speedup",)),
    ):
        if name not in b.tables:
            out += [f"{title}: **missing** ({b.missing.get(name, 'not computed')})", ""]
            continue
        d = clean_test(b.tables[name])
        extra = [c for c in ("compact", "sweep") if c in d.columns and d[c].nunique() > 1]
        d = _with_ci(d, {c: (c.replace("_", " "), "x") for c in ci})
        show = cols + extra + [c.replace("_", " ") for c in ci]
        if "measured_over_expected" in d.columns:
            d, show = (
                d.rename(columns={"measured_over_expected": "measured/expected"}),
                show + ["measured/expected"],
            )
        out += [f"{title} at <= {100 * MAX_DROP:.0f} point drop:", "", md_table(d[show]), ""]
    for name, x in (("speedup_auc_measured", "measured"), ("speedup_auc_expected", "expected")):
        if name in b.tables:
            d = b.tables[name]
            keep = [
                c
                for c in ("method", "regime", "kv_policy", "batch_size", "task", "metric", "timer")
                if c in d
            ]
            out += [f"Mean quality over the {x}-speedup range shared by the methods (AUC / width):", ""]
            out += [md_table(d[keep + ["x_lo", "x_hi", "auc", "n_frontier"]]), ""]
    return out


def _overthinking_md(b: Built) -> list[str]:
    out = _missing(b, "overthinking")
    if "overthinking" in b.tables:
        d = _with_ci(b.tables["overthinking"], {"overthinking_rate": ("overthinking rate", "%")})
        cols = ["method", "regime", "n", "depth", "final_accuracy", "overthinking rate", "oracle_accuracy"]
        out += [md_table(d[cols + ["oracle_expected_speedup"]]), ""]
        out += _figure(b, "overthinking_by_layer", "overthinking by layer")
    return out


def _midcrisis_md(b: Built) -> list[str]:
    out = _missing(b, "midcrisis") + _figure(b, "midcrisis_layers", "per-layer exit accuracy")
    if "midcrisis_dip" in b.tables:
        d = _with_ci(b.tables["midcrisis_dip"], {"dip": ("dip", "pts")})
        cols = ["method", "regime", "depth", "middle_first", "middle_last", "dip", "dip_layer"]
        out += [md_table(d[cols + ["peak_layer"]]), ""]
    return out


def _robustness_md(b: Built) -> list[str]:
    if "robustness" not in b.tables:
        return _missing(b, "robustness") or ["**missing**", ""]
    r = b.tables["robustness"]
    shift = r["split"] + ":" + r["perturbation"] + ":" + r["severity"].astype(str)
    wide = r.assign(shift=shift).pivot_table(
        index=["method", "regime", "metric"], columns="shift", values="drop_vs_clean"
    )
    out = ["Operating points, calibrated on clean val:", "", md_table(b.tables["robustness_operating"]), ""]
    out += ["Drop vs clean test at the operating point (split:perturbation:severity):", ""]
    return out + [md_table(wide.reset_index()), ""] + _figure(b, "robustness_heatmap", "robustness")


def render_report(b: Built, made: str) -> str:
    """REPORT.md's text from what build_report computed."""
    m = b.res.manifest
    git = m.get("git_commit") or m.get("git") or "unknown"
    dirty = m.get("git_dirty")
    if isinstance(git, dict):
        git, dirty = git.get("commit") or git.get("sha") or str(git), git.get("dirty", dirty)
    dirty = " (dirty work tree)" if dirty else ""
    stages = m.get("stage_seconds") or {}
    out = [
        f"# FREE benchmark report: profile `{b.res.profile}`, device {m.get('device') or 'unknown'}",
        "",
        f"- made: {made}, from `{b.res.root}`",
        f"- git commit: `{git}`{dirty}",
        f"- bootstrap: {b.n_boot} resamples, seed {b.seed}; CIs are 95% percentile intervals",
    ]
    if stages:
        out += ["- stage seconds: " + ", ".join(f"{k} {_fmt(float(v))}" for k, v in stages.items())]
    out += [f"- note: {n}" for n in b.res.notes]
    out += [f"- missing: {part} ({why})" for part, why in b.missing.items()] + [""]
    sections = (
        ("Backbone", _backbone),
        ("Exits", _exits_md),
        ("Accuracy vs speedup", _speedup_md),
        ("Overthinking", _overthinking_md),
        ("Mid-crisis", _midcrisis_md),
        ("Robustness", _robustness_md),
    )
    for title, fn in sections:
        out += [f"## {title}", ""] + fn(b)
    out += ["## The paper's claims", ""]
    for i, (claim, verdict, sentence) in enumerate(b.claims, 1):
        out += [f'{i}. **"{claim}"**: verdict **{verdict}**. {sentence}']
    return "\n".join(out) + "\n"


def build_report(results: Path, *, n_boot: int = 1000, seed: int = 0) -> Path:
    """Read results/<profile>/, write tables/, figures/ and REPORT.md into it; return REPORT.md's path."""
    res = load_results(Path(results))
    b = Built(res, n_boot, seed)
    _backbone_tables(b)
    b.attempt("speedup", _speedup)
    _per_exit_parts(b)
    if res.exit_runs is not None:
        b.tables["exits_training"] = res.exit_runs
    b.attempt("robustness", _robustness)
    _claims(b)
    written = {write_csv(res.root / "tables" / f"{name}.csv", df) for name, df in b.tables.items()}
    written |= {p.with_suffix(ext) for p in b.figures.values() for ext in (".png", ".pdf")}
    for sub in ("tables", "figures"):
        _remove_stale(res.root / sub, written)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return write_text(res.root / "REPORT.md", render_report(b, made))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build REPORT.md, tables/ and figures/ for a results folder."
    )
    parser.add_argument("results", type=Path, help="a results folder, e.g. results/cpu")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    print(build_report(args.results, n_boot=args.n_boot, seed=args.seed))


if __name__ == "__main__":
    main()
