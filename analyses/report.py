"""REPORT.md for one results folder: every table (CSV in tables/), every figure (PNG + PDF in figures/) and
a plain verdict on each of the FREE paper's claims, computed from the numbers and their CIs.

A part whose inputs are absent is reported as missing, with the reason; no number is ever invented for
it. Usage: `python -m analyses.report results/<profile>`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from analyses import figures
from analyses.built import MAX_DROP, Built, clean_test
from analyses.claims import (
    SPEEDUP_TOL,
    TARGET_SPEEDUP,
    UNITS,
    build_claims,
    verdict_dip,
    verdict_overthinking,
    verdict_robustness,
    verdict_speedup,
)
from analyses.fastest import label_own
from analyses.fixed_cost import compute_fixed_share
from analyses.load import load_results, write_csv, write_text
from analyses.midcrisis import compute_dip, compute_dip_ci, compute_layer_curves
from analyses.overthinking import compute_overthinking, compute_overthinking_by_layer
from analyses.render import claims_frame, md_table, render_report
from analyses.report_guarantees import attack_part, calibration_part
from analyses.report_robustness import robustness_part
from analyses.report_scale import projection_part, scale_part, sweep_cost_part
from analyses.report_speed import (
    batches_part,
    engine_targets_part,
    speculative_part,
    summary_part,
    vs_fastest_part,
)
from analyses.speculative import verdict_speculative
from analyses.speedup import KEYS, best_at_drop, collapse_points, compute_auc, compute_curves

__all__ = [
    "MAX_DROP",
    "OUTPUT_EXTS",
    "SPEEDUP_TOL",
    "TARGET_SPEEDUP",
    "UNITS",
    "Built",
    "build_report",
    "clean_test",
    "extra_keys_for",
    "label_seeds",
    "main",
    "md_table",
    "render_report",
    "verdict_dip",
    "verdict_overthinking",
    "verdict_robustness",
    "verdict_speedup",
]

OUTPUT_EXTS = (".csv", ".png", ".pdf")


def extra_keys_for(sweep: pd.DataFrame) -> list[str]:
    """`timer` and `engine` (where the sweep has it; speedups of two engines are never one curve) always;
    then `compact`, then the sweep folder, added only while points would collide."""
    keys = ["timer"] + (["engine"] if "engine" in sweep.columns else [])
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


def _speedup(b: Built) -> None:
    sweep, samples = b.res.sweep, b.res.samples
    raw = samples  # every full-model time, for the fastest full model's baseline
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
    curves = label_own(pd.concat([curves, _oracle_rows(b)], ignore_index=True))  # `baseline`: own engine
    b.tables["speedup_curves"] = curves
    timed = curves[curves["timer"] != "none"]
    simulated = curves[curves["timer"] == "none"]
    has_measured = np.isfinite(timed["measured_speedup"].astype(float)) & ~timed["method"].isin(["full"])
    if has_measured.any():
        b.tables["speedup_best_measured"] = best_at_drop(timed, MAX_DROP, "measured_speedup", extra)
        b.attempt("speedup_auc_measured", _auc, timed, "measured_speedup", extra)
    else:
        b.missing["speedup_best_measured"] = "no timed sweep (every sweep has timer 'none')"
    if len(simulated):
        b.tables["speedup_best_expected"] = best_at_drop(simulated, MAX_DROP, "expected_speedup", extra)
    else:
        b.missing["speedup_best_expected"] = "no simulated sweep (timer 'none')"
    b.attempt("speedup_auc_expected", _auc, curves, "expected_speedup", extra)
    if samples is not None and "prefix_ms" in samples.columns:
        fixed = compute_fixed_share(samples[samples["method"] != "full"])
        if len(fixed):
            b.tables["speedup_fixed_share"] = label_own(fixed)
    devices = sweep.groupby("timer")["device"].agg(lambda s: ", ".join(sorted(s.astype(str).unique())))
    b.figures |= figures.speedup_figures(curves, b.res.root / "figures", b.res.profile, devices.to_dict())
    b.attempt("speedup_vs_fastest", vs_fastest_part, curves, samples, raw, extra, devices.to_dict())
    if "speedup_best_measured" in b.tables:
        best = b.tables["speedup_best_measured"]
        b.tables["speedup_best_measured"] = best.assign(
            measured_over_expected=best["measured_speedup"] / best["expected_speedup"]
        )
    b.attempt("batches", batches_part, samples, extra)
    b.attempt("speculative", speculative_part)
    b.attempt("engine_targets", engine_targets_part)
    b.attempt("summary", summary_part)


def _oracle_rows(b: Built) -> pd.DataFrame:
    """The oracle per exits run (the earliest exit that answers right; a layer-count speedup, exit cost
    not included) as reference rows of the VQA test curves: the figures draw its best as a ceiling."""
    pe = b.res.per_exit.get("test")
    if pe is None or pe.empty:
        return pd.DataFrame()
    over = compute_overthinking(label_seeds(pe), n_boot=max(1, min(b.n_boot, 200)), seed=b.seed)
    return pd.DataFrame({"method": "oracle", "regime": over["method"] + "-" + over["regime"],
                         "kv_policy": "propagate", "batch_size": 1, "task": "vqa", "split": "test",
                         "perturbation": "none", "metric": "vqa_accuracy", "timer": "none", "engine": "none",
                         "threshold": float("nan"),
                         "value": over["oracle_accuracy"], "expected_speedup": over["oracle_expected_speedup"],
                         "measured_speedup": float("nan"), "mean_exit_layer": over["oracle_mean_exit_layer"]})  # fmt: skip


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
            # an exit at the last layer and the model's own final layer share a layer: never average them
            exit_rows = scored[scored["exit_kind"] == "exit"]
            wide = exit_rows.pivot_table(index=["method", "regime"], columns="layer", values="value")
            wide.columns = [f"L{c}" for c in wide.columns]
            final_cider = scored[scored["exit_kind"] == "final"].groupby(["method", "regime"])["value"].mean()
            b.tables["exits_cider_test"] = wide.assign(final=final_cider).reset_index()
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


def _backbone_tables(b: Built) -> None:
    q = b.res.quality or {}
    caps = q.get("captions", q.get("caption_scores"))
    if isinstance(caps, dict) and "missing" not in caps:
        b.tables["backbone_captions"] = pd.DataFrame([caps])
    elif b.res.quality is not None:
        b.missing["backbone_captions"] = caps.get("missing") if isinstance(caps, dict) else "not in quality.json"
    if by_type := q.get("vqa_accuracy_by_type"):
        b.tables["backbone_vqa_by_type"] = pd.DataFrame(
            {"question_type": list(by_type), "vqa_accuracy": list(by_type.values())}
        )
    if lens := q.get("logit_lens"):
        lens = pd.DataFrame({"layer": [int(k) for k in lens], "accuracy": list(lens.values())})
        b.tables["backbone_logit_lens"] = lens
        title = f"{b.res.profile}: backbone, VQA accuracy of the logit lens per layer"
        draw = figures.titled(figures.plot_logit_lens, lens, title)
        b.figures["backbone_logit_lens"] = figures.save_figure(b.res.root / "figures", "backbone_logit_lens", draw)[0]


def _remove_stale(folder: Path, keep: set[Path]) -> None:
    """tables/ and figures/ belong to the report: drop outputs of an earlier run that this run did not make."""
    for f in folder.glob("*"):
        if f.is_file() and f.suffix in OUTPUT_EXTS and f not in keep and not f.name.startswith("."):
            f.unlink()


def build_report(results: Path, *, n_boot: int = 1000, seed: int = 0) -> Path:
    """Read results/<profile>/, write tables/, figures/ and REPORT.md into it; return REPORT.md's path."""
    res = load_results(Path(results))
    b = Built(res, n_boot, seed)
    _backbone_tables(b)
    b.attempt("speedup", _speedup)
    b.attempt("projection", projection_part)
    b.attempt("scale", scale_part)
    b.attempt("sweep_cost", sweep_cost_part)
    _per_exit_parts(b)
    if res.exit_runs is not None:
        b.tables["exits_training"] = res.exit_runs
    b.attempt("robustness", robustness_part)
    b.attempt("calibration", calibration_part)
    b.attempt("attack", attack_part)
    b.claims = build_claims(b.tables, b.missing)
    b.targets = [("FREE >= 1.5x lossless on captions (batch 1)",)
                 + verdict_speculative(b.tables.get("speculative"), b.missing.get("speculative"))]  # fmt: skip
    b.tables["claims"] = claims_frame(b)
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
