"""REPORT.md from what build_report computed (a `Built`): a short provenance header, then the summary (each
claim's verdict with its CI, each target's, each method's best point), then one section per part, each
with its figure first and at most a narrow table (the wide ones are linked in tables/), then each claim's
full evidence and the notes on what is missing."""

from __future__ import annotations

import pandas as pd

from analyses.built import MAX_DROP, Built
from analyses.render_md import fmt, md_table, who, with_ci
from analyses.render_sections import (
    backbone_md,
    exits_md,
    guarantees_md,
    midcrisis_md,
    overthinking_md,
    robustness_md,
)
from analyses.render_speed import (
    batches_md,
    engine_targets_md,
    scale_md,
    speculative_md,
    speedup_md,
    sweep_cost_md,
)
from analyses.summary import claim_headlines

__all__ = ["md_table", "render_report"]

SECTIONS = (
    ("Accuracy vs speedup", speedup_md),
    ("Batches", batches_md),
    ("Speculative decoding", speculative_md),
    ("Engine targets", engine_targets_md),
    ("Robustness", robustness_md),
    ("Overthinking", overthinking_md),
    ("Mid-crisis", midcrisis_md),
    ("Guarantees and attacks", guarantees_md),
    ("Backbone", backbone_md),
    ("Exits", exits_md),
    ("At BLIP-2 size", scale_md),
    ("Simulated sweep cost", sweep_cost_md),
)


def _scorers(b: Built) -> str:
    """Which VQA accuracy rule the sweeps' numbers follow (the `scorer` column of sweep.parquet)."""
    sweep = b.res.sweep
    if sweep is None or "scorer" not in sweep.columns:
        return "not recorded (tables made before the scorer was recorded used GT-Vision-Lab HEAD's rule)"
    names = sorted({str(v) for v in sweep.loc[sweep["task"] == "vqa", "scorer"].dropna()} - {"none"})
    unrecorded = sweep.loc[sweep["task"] == "vqa", "scorer"].isna().any()
    return ", ".join(f"`{n}`" for n in names) + (" (some tables unrecorded: HEAD's rule)" if unrecorded else "")


def _header(b: Built, made: str) -> list[str]:
    m = b.res.manifest
    git = m.get("git_commit") or m.get("git") or "unknown"
    dirty = m.get("git_dirty")
    if isinstance(git, dict):
        git, dirty = git.get("commit") or git.get("sha") or str(git), git.get("dirty", dirty)
    source = f"; source hash `{m['source_hash']}`" if m.get("source_hash") else ""
    out = [
        f"# FREE benchmark report: profile `{b.res.profile}`, device {m.get('device') or 'unknown'}",
        "",
        f"- made: {made}, from `{b.res.root}`",
        f"- git commit: `{git}`{' (dirty work tree)' if dirty else ''}{source}",
        f"- bootstrap: {b.n_boot} resamples, seed {b.seed}; CIs are 95% percentile intervals",
        f"- VQA scorer: {_scorers(b)}",
    ]
    if stages := m.get("stage_seconds") or {}:
        out += ["- stage seconds: " + ", ".join(f"{k} {fmt(float(v))}" for k, v in stages.items())]
    n = len(b.res.notes) + len(b.missing)
    return out + ([f"- {n} notes on inputs and missing parts: [Notes](#notes)"] if n else []) + [""]


def _best_points_md(b: Built) -> list[str]:
    if "summary_best_points" not in b.tables:
        return [f"Best points: **missing** ({b.missing.get('summary', 'not computed')})", ""]
    d = b.tables["summary_best_points"]
    d = with_ci(d, {"value": ("quality [CI]", ""), "measured_speedup": ("measured [CI]", "x")})
    d["quality [CI]"] = [q if ok else f"{q}, {100 * drop:.1f} pts below"
                         for q, ok, drop in zip(d["quality [CI]"], d["meets_drop"].astype(bool), d["drop"], strict=True)]  # fmt: skip
    d["engine"] = [e if e == "none" else f"{e}, {kv}" for e, kv in zip(d["engine"], d["kv_policy"], strict=True)]
    d = d.assign(method=who(d), expected=d["expected_speedup"], batch=d["batch_size"], n=d["n_samples"],
                 against=d["baseline"])  # fmt: skip
    cols = ["method", "task", "quality [CI]", "measured [CI]", "expected", "engine", "batch", "n", "against"]
    return [
        f"Each method's best point on clean test: the fastest within {100 * MAX_DROP:.0f} point of the full model "
        "(else the best quality, with its drop), over engines, KV policies and thresholds, measured at batch 1 "
        "against the fastest full model of this run where it was timed there (`against` names the baseline); "
        "`n`: questions; [summary_best_points.csv](tables/summary_best_points.csv) has every column.",
        "",
        md_table(d[cols]),
        "",
    ]


def _summary(b: Built) -> list[str]:
    out = ["## Summary", "", "The paper's claims (evidence: [The paper's claims](#the-papers-claims)):", ""]
    heads = claim_headlines(b.tables)
    for i, ((claim, verdict, sentence), head) in enumerate(zip(b.claims, heads, strict=True), 1):
        out += [f'{i}. **"{claim}"**: verdict **{verdict}**' + (f": {head}." if head else f". {sentence}")]
    out += ["", "Targets:", ""]
    out += [f'- "{t}": **{v}**. {s}' for t, v, s in b.targets]
    if "engine_targets_summary" in b.tables:
        s = b.tables["engine_targets_summary"]
        shown = "; ".join(f"{r.engine} batch {r.batch_size}: {r.meet_with_prefix} and {r.meet_decode_phase}"
                          for r in s.itertuples())  # fmt: skip
        out += [f"- Engine targets, points meeting measured / expected_with_prefix >= 0.9 and the decode phase's "
                f">= 0.9: {shown} ([Engine targets](#engine-targets))."]  # fmt: skip
    elif "engine_targets" in b.missing:
        out += [f"- Engine targets: **missing** ({b.missing['engine_targets']})."]
    if "batches" in b.tables:
        m = b.tables["batches"]["meets_target"].dropna()
        why = b.missing.get("batches_expected")
        text = (f"{int(m.sum())} of {len(m)} batched points meet 0.9 of their batch's own expectation" if len(m)
                else f"no batch expectation ({why})" if why else "no batch expectation")  # fmt: skip
        out += [f"- Batches: {text} ([Batches](#batches))."]
    return out + [""] + _best_points_md(b)


def _notes(b: Built) -> list[str]:
    out = ["## Notes", ""] + [f"- note: {n}" for n in b.res.notes]
    out += [f"- missing: {part} ({why})" for part, why in b.missing.items()]
    return out + ([] if len(out) > 2 else ["Nothing is missing."]) + [""]


def render_report(b: Built, made: str) -> str:
    """REPORT.md's text from what build_report computed."""
    out = _header(b, made) + _summary(b)
    for title, fn in SECTIONS:
        out += [f"## {title}", ""] + fn(b)
    out += ["## The paper's claims", ""]
    out += [f'{i}. **"{claim}"**: verdict **{verdict}**. {sentence}' for i, (claim, verdict, sentence) in
            enumerate(b.claims, 1)]  # fmt: skip
    return "\n".join(out + [""] + _notes(b)).rstrip("\n") + "\n"


def claims_frame(b: Built) -> pd.DataFrame:
    """claims.csv: each claim and target with its verdict, headline numbers and evidence."""
    heads = claim_headlines(b.tables)
    rows = [(c, v, h, s) for (c, v, s), h in zip(b.claims, heads, strict=True)]
    rows += [(t, v, "", s) for t, v, s in b.targets]
    return pd.DataFrame(rows, columns=["claim", "verdict", "headline", "evidence"])
