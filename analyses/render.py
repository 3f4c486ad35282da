"""REPORT.md's markdown: `md_table`, one `_*_md` function per section, and `render_report`, which puts
them together from what build_report computed (a `Built`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.built import MAX_DROP, Built, clean_test
from analyses.fmt import ci as _ci
from analyses.report_guarantees import guarantees_md
from analyses.sweep_cost import TARGET, summary


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
        title = (
            "Training time per exits run (seconds; `wall_seconds` is the last process's, "
            "from its resume where `resumed_at_steps` names one):"
        )
        out += [title, "", md_table(b.tables["exits_training"]), ""]
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
    engines = _live_engines(b)
    if len(engines) > 1:
        out += [
            f"Live points were decoded by {len(engines)} engines ({', '.join(engines)}; `engine` column). "
            "Each measured speedup is against the full model timed through the same engine in the same "
            "run, so every engine has its own curves, figures and table rows; they are never pooled.",
            "",
        ]
    for name in sorted(n for n in b.figures if n.startswith("speedup_")):
        out += _figure(b, name, name.replace("_", " "))
    cols = ["method", "regime", "kv_policy", "batch_size", "task", "metric", "timer", "engine", "threshold"]
    cols += ["value", "full_value", "drop", "meets_drop"]
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
        live = "engine" in d.columns and (d["engine"] != "none").any()  # simulated rows: engine "none"
        keep = [c for c in cols if c in d.columns and (c != "engine" or live)]
        show = keep + extra + [c.replace("_", " ") for c in ci]
        if "measured_over_expected" in d.columns:
            d, show = (
                d.rename(columns={"measured_over_expected": "measured/expected"}),
                show + ["measured/expected"],
            )
        out += [f"{title} at <= {100 * MAX_DROP:.0f} point drop:", "", md_table(d[show]), ""]
    if "speedup_fixed_share" in b.tables:
        d = b.tables["speedup_fixed_share"]
        d = d[(d["split"] == "test") & (d["perturbation"] == "none")]
        cols = ["method", "regime", "kv_policy", "batch_size", "task", "engine", "threshold", "sweep", "prefix_share",
                "measured_speedup", "expected_speedup", "lm_measured_speedup", "expected_with_prefix"]  # fmt: skip
        out += [
            "Where measured speedup loses to expected: the prefix (vision tower, Q-Former, projection) runs "
            "for every sample whatever the exit and is timed alone beside the full model. `prefix_share`: "
            "its share of the full model's time; `lm_measured_speedup`: (full - prefix) / (early - prefix); "
            "`expected_with_prefix`: the expected speedup with the prefix priced at its measured time.",
            "",
            md_table(d[[c for c in cols if c in d.columns]]),
            "",
        ]
    for name, x in (("speedup_auc_measured", "measured"), ("speedup_auc_expected", "expected")):
        if name in b.tables:
            d = b.tables[name]
            keep = [
                c
                for c in ("method", "regime", "kv_policy", "batch_size", "task", "metric", "timer", "engine")
                if c in d
            ]
            out += [f"Mean quality over the {x}-speedup range shared by the methods (AUC / width):", ""]
            out += [md_table(d[keep + ["x_lo", "x_hi", "auc", "n_frontier"]]), ""]
    return out + _sweep_cost_md(b) + _projection_md(b)


def _sweep_cost_md(b: Built) -> list[str]:
    """Simulated sweeps against their teacher-forced pass (`analyses.sweep_cost`)."""
    if "simulated_sweep_cost" not in b.tables:
        return [f"Simulated sweep cost: **missing** ({b.missing.get('sweep_cost', 'not computed')})", ""]
    d = b.tables["simulated_sweep_cost"]
    return [
        f"Simulated sweep cost (the recording pass, then every threshold offline; target <= {TARGET}x the "
        f"pass): {summary(d)}.",
        "",
        md_table(d.drop(columns=["within_target"])),
        "",
    ]


def _live_engines(b: Built) -> list[str]:
    """The decode engines of the live points (engine "none" is the simulated sweeps')."""
    curves = b.tables.get("speedup_curves")
    if curves is None or "engine" not in curves.columns:
        return []
    return sorted(str(g) for g in curves.loc[curves["timer"] != "none", "engine"].dropna().unique())


def _scale_md(b: Built) -> list[str]:
    if "blip2_scale" not in b.tables:
        return []
    return [
        "**Measured at BLIP-2 size** (`scale/`, `tests/benchmarks/bench_scale.py`): random-init BLIP-2 "
        "OPT-2.7b / Flan-T5-XL built from config, batch 1, eager engine; each method's earliest exit on "
        "every token against the full model timed beside it. Random weights make accuracy meaningless: "
        "these are the cost structure's numbers, not a method's operating point.",
        "",
        md_table(b.tables["blip2_scale"]),
        "",
        *_replay_md(b),
    ]


def _replay_md(b: Built) -> list[str]:
    if "blip2_replay" not in b.tables:
        return [f"Replayed depths at BLIP-2 size: **missing** ({b.missing['blip2_replay']})", ""] if (
            "blip2_replay" in b.missing) else []
    return [
        "**Replayed at BLIP-2 size, measured** (`scale/replay_*`, `bench_scale.py --replay`): the per-token exit "
        "depths that live sweeps of an embedded profile recorded (`source`), mapped by depth fraction onto the "
        "random-init model (`mapping`: exactly, or to the nearest layer where its depth is no multiple of the "
        "source's; the exits are trained at the mapped layers) and decoded there (`generate(..., schedule=...)`: each token stops where it was "
        "recorded, the method's checks below it run), the full model decoding as many tokens and the prefix "
        "timed beside each, CUDA events, batch 1. `expected_with_prefix` counts the measured prefix and "
        "scales the rest by the layer count; `projected_speedup` prices the same depths with the engine "
        "benchmarks' costs and leaves the prefix out, so it compares with `lm_measured_speedup` (the decode after the prefix).",
        "",
        md_table(b.tables["blip2_replay"]),
        "",
    ]


def _projection_md(b: Built) -> list[str]:
    if "projection" in b.missing:
        return [f"Projection to a larger decoder: **missing** ({b.missing['projection']})", ""] + _scale_md(b)
    if "projection" not in b.tables:
        return _scale_md(b)
    return _scale_md(b) + [
        "**A projection, not a measurement** (`analyses.projection`): the wall-clock speedup the exit "
        "depths of each timed batch-1 point would give on the benchmarked decoder shape (BLIP-2 "
        "OPT-2.7b's LM), priced with that shape's per-layer, fixed per-token and per-check costs measured "
        "on the same GPU (`engine/bench_engine_*.json`; FREE and distillation checks include their "
        "generator layer); depths scaled to its layer count, the prefix left out.",
        "",
        md_table(b.tables["projection"]),
        "",
    ]


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
    op = b.tables["robustness_operating"]
    how = (
        "calibrated on clean val"
        if "meets_drop" in op.columns
        else "the thresholds the shifted sweeps ran at"
    )
    out = [f"Operating points ({how}):", "", md_table(op), ""]
    out += ["Drop vs clean test at the operating point (split:perturbation:severity; means, no CI):", ""]
    out += [md_table(wide.reset_index()), ""] + _figure(b, "robustness_heatmap", "robustness")
    return out + _robustness_ci_md(b)


def _robustness_ci_md(b: Built) -> list[str]:
    if "robustness_drop_ci" not in b.tables:
        return [f"Drop with CIs: **missing** ({b.missing.get('robustness_drop_ci', 'not computed')})", ""]
    d = _with_ci(
        b.tables["robustness_drop_ci"],
        {
            "drop": ("drop [CI]", "pts"),
            "diff": ("drop - FREE's [CI]", "pts"),
            "novel_value": ("test_novel value [CI]", ""),
            "novel_drop": ("test_novel drop [CI]", "pts"),
        },
    )
    d.loc[d["diff"].isna(), "drop - FREE's [CI]"] = ""
    d["vs"] = np.where(d["vs_free"] != "", "free-" + d["vs_free"].astype(str), "")
    cols = ["method", "regime", "task", "n_samples", "n_shifts", "clean_value", "drop [CI]", "vs"]
    cols += ["drop - FREE's [CI]", "novel_n", "test_novel value [CI]", "test_novel drop [CI]"]
    return [
        "Drop vs clean test with bootstrap CIs, from the per-sample tables: `drop [CI]` is the mean of clean "
        "minus shifted over every perturbation x severity (`n_shifts`) of the same `n_samples` test "
        "questions, paired by question; the questions are resampled alike for every method, so `drop - "
        "FREE's` (a baseline's drop minus that of the FREE regime in `vs`; above 0: FREE drops less) is a "
        "paired comparison. test_novel asks other questions (`novel_n`), so its drop (clean test minus "
        "test_novel) is unpaired and left out of the claim's verdict. The full model is shown for reference.",
        "",
        md_table(d[cols]),
        "",
    ]


def _scorers(b: Built) -> str:
    """Which VQA accuracy rule the sweeps' numbers follow (the `scorer` column of sweep.parquet)."""
    sweep = b.res.sweep
    if sweep is None or "scorer" not in sweep.columns:
        return "not recorded (tables made before the scorer was recorded used GT-Vision-Lab HEAD's rule)"
    names = sorted({str(v) for v in sweep.loc[sweep["task"] == "vqa", "scorer"].dropna()} - {"none"})
    unrecorded = sweep.loc[sweep["task"] == "vqa", "scorer"].isna().any()
    return ", ".join(f"`{n}`" for n in names) + (" (some tables unrecorded: HEAD's rule)" if unrecorded else "")


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
        f"- git commit: `{git}`{dirty}"
        + (
            f"; source hash `{m['source_hash']}` (`free_bench.core.records.source_hash()`)"
            if m.get("source_hash")
            else ""
        ),
        f"- bootstrap: {b.n_boot} resamples, seed {b.seed}; CIs are 95% percentile intervals",
    ]
    out += [f"- VQA scorer: {_scorers(b)}"]
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
        ("Guarantees and attacks", lambda b: guarantees_md(b, md_table, _figure, _missing)),
    )
    for title, fn in sections:
        out += [f"## {title}", ""] + fn(b)
    out += ["## The paper's claims", ""]
    for i, (claim, verdict, sentence) in enumerate(b.claims, 1):
        out += [f'{i}. **"{claim}"**: verdict **{verdict}**. {sentence}']
    return "\n".join(out) + "\n"
