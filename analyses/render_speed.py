"""REPORT.md's speed sections: accuracy vs speedup, batches, speculative decoding, the engine targets, the
BLIP-2-size measurements and the simulated sweeps' cost. Each shows its figure first and at most a narrow
table; the wide tables are linked in tables/."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.batches import COMPACT
from analyses.built import MAX_DROP, Built, clean_test
from analyses.engine_targets import TARGET_RATIO
from analyses.fastest import FASTEST
from analyses.render_md import figure, links, md_table, missing, who, with_ci
from analyses.sweep_cost import TARGET, summary

SPEEDUP_TABLES = {
    "speedup_best_measured": "every timed curve's best point, all splits and batch sizes, against each engine's "
    "own full model and, at batch 1, the fastest one (`baseline`)",
    "speedup_best_expected": "the simulated curves' best points",
    "speedup_curves": "every point with its CIs",
    "speedup_curves_vs_fastest": "every timed batch-1 point against the fastest full model",
    "speedup_fastest_baseline": "the fastest full model's time per question",
    "speedup_auc_measured": "mean quality over the measured-speedup range the methods share",
    "speedup_auc_expected": "the same over the expected-speedup range",
    "speedup_fixed_share": "the prefix's share, the decode phase's speedup, the expected speedup with the prefix",
}


def _fastest_rows(b: Built) -> pd.DataFrame:
    d = b.tables.get("speedup_best_measured")
    if d is None or "baseline" not in d.columns:
        return pd.DataFrame()
    d = clean_test(d)
    return d[d["baseline"].astype(str).str.startswith(FASTEST) & ~d["method"].isin(["full", "oracle"])]


def speedup_md(b: Built) -> list[str]:
    if "speedup" in b.missing:
        return missing(b, "speedup")
    out: list[str] = []
    for kind in ("speedup_vs_fastest", "speedup_measured", "speedup_expected"):  # the verdict's figure first
        for name in sorted(n for n in b.figures if n.startswith(kind)):
            out += figure(b, name, name.replace("_", " "))
    out += [
        f"Best point per method and engine at most {100 * MAX_DROP:.0f} point below the full model (clean test, "
        "batch 1; else the best-quality point). Measured speedups of every engine are set against one "
        "baseline, the fastest full model of this run: per question, the full model on the engine whose full "
        "model decodes it fastest (by its median time over the run), timed beside the point where the point "
        "ran on that engine, else that engine's median, against the point's own time for the same question "
        "(paired bootstrap CIs over questions). `own engine` is the same point against its own engine's full "
        "model, which flatters an engine whose full model is slow. Expected speedup counts layers.",
        "",
    ]
    fast = _fastest_rows(b)
    if len(fast):
        d = with_ci(fast.sort_values(["method", "regime", "engine", "kv_policy"]),
                    {"measured_speedup": ("measured vs fastest [CI]", "x")})  # fmt: skip
        d = d.assign(method=who(d), quality=d["value"], engine=d["engine"] + ", " + d["kv_policy"],
                     n=d["n_samples"], **{"own engine": d["own_speedup"], "expected": d["expected_speedup"]})  # fmt: skip
        cols = ["method", "engine", "threshold", "quality", "measured vs fastest [CI]", "own engine", "expected", "n"]
        against = ", ".join(sorted(fast["baseline"].astype(str).unique()))
        out += [f"Against the {against}:", "", md_table(d[cols]), ""]
    elif "speedup_best_measured" in b.tables:
        why = b.missing.get("speedup_vs_fastest", "not computed")
        d = clean_test(b.tables["speedup_best_measured"])
        d = with_ci(d[d["batch_size"] == d["batch_size"].min()], {"measured_speedup": ("measured [CI]", "x")})
        d = d.assign(method=who(d), quality=d["value"], expected=d["expected_speedup"])
        out += [f"Against the fastest full model: **missing** ({why}). Against each engine's own full model:", ""]
        out += [md_table(d[["method", "engine", "kv_policy", "batch_size", "threshold", "quality", "measured [CI]",
                            "expected"]]), ""]  # fmt: skip
    else:
        out += [f"Timed sweeps: **missing** ({b.missing.get('speedup_best_measured', 'not computed')})", ""]
    out += _simulated_line(b) + links(b, SPEEDUP_TABLES)
    return out


def _simulated_line(b: Built) -> list[str]:
    if "speedup_best_expected" not in b.tables:
        return [f"Simulated sweeps: **missing** ({b.missing.get('speedup_best_expected', 'not computed')})", ""]
    d = clean_test(b.tables["speedup_best_expected"])
    d = d[d["meets_drop"].astype(bool)].assign(who=lambda x: who(x))
    shown = "; ".join(f"{r.who} {r.task} {r.expected_speedup:.2f}x" for r in d.itertuples())
    return [f"Simulated sweeps (untimed), best expected speedup within {100 * MAX_DROP:.0f} point: {shown or 'none'}.", ""]


def batches_md(b: Built) -> list[str]:
    if "batches" not in b.tables:
        return missing(b, "batches") or ["**missing**", ""]
    out = figure(b, "batches", "batches") + [
        "Per method, engine, batch size and compaction (clean test): the measured speedup against the batch's "
        "own expectation with the prefix priced in, `expected_batch_with_prefix = full / (prefix + (full - "
        "prefix) / expected_batch_speedup)` (sums over the point's samples; `expected_batch_speedup` counts each "
        "layer once per step if any row in flight ran it), beside the per-row `expected_speedup`; target: "
        f"measured / expected_batch_with_prefix >= {TARGET_RATIO:g}.",
        "",
    ]
    if "batches_expected" in b.missing:
        out += [f"Batch expectation: **missing** ({b.missing['batches_expected']}).", ""]
    d = b.tables["batches"]
    d = with_ci(d, {"measured_speedup": ("measured [CI]", "x")}).assign(method=who(d))
    ratio = [f"{r:.3f} ({'meets' if m else 'below'})" if pd.notna(m) else "n/a"
             for r, m in zip(d["measured_over_batch_expected"], d["meets_target"], strict=True)]  # fmt: skip
    batch = [f"{n}, {COMPACT.get(str(c).lower(), 'compaction not recorded')}" for n, c in zip(d["batch_size"], d["compact"],
                                                                                      strict=True)]  # fmt: skip
    d = d.assign(**{"measured / batch expected": ratio, "expected (per row)": d["expected_speedup"], "batch": batch,
                    "n": d["n_samples"] if "n_samples" in d.columns else pd.NA})  # fmt: skip
    cols = ["method", "engine", "batch", "measured [CI]", "expected (per row)", "expected_batch_with_prefix",
            "measured / batch expected", "n"]  # fmt: skip
    out += [md_table(d[cols]), ""]
    comp = b.tables.get("batches_compaction")
    if comp is not None and len(comp):
        c = with_ci(comp, {"compacted_speedup": ("c", "x"), "riding_along_speedup": ("r", "x")}).assign(who=who(comp))
        shown = "; ".join(f"{r.who} {r.engine} batch {r.batch_size} at {r.threshold:g}: {r.faster} "
                          f"(compacted {r.c}, riding along {r.r})" for r in c.itertuples())  # fmt: skip
        out += [f"Compacted or riding along, the faster: {shown}.", ""]
    return out + links(b, {"batches": "every column above and prefix_share", "batches_compaction": "both ways"})


def speculative_md(b: Built) -> list[str]:
    verdict = next((c for c in b.targets if c[0].startswith("FREE >= 1.5x lossless")), None)
    out = missing(b, "speculative") if "speculative" not in b.tables else figure(b, "speculative", "speculative")
    if verdict is not None:
        out += [f'Target "{verdict[0]}": **{verdict[1]}**. {verdict[2]}', ""]
    if "speculative" not in b.tables:
        return out
    d = b.tables["speculative"]
    fastest = d[d["baseline"].astype(str).str.startswith(FASTEST)]
    d = fastest if len(fastest) else d
    d = with_ci(d, {"measured_speedup": ("lossless [CI]", "x"), "lossy_speedup": ("lossy [CI]", "x")})
    d["lossy [CI]"] = [s if not np.isfinite(x) else f"{s}, drop {100 * x:.1f} pts" if m == "vqa_accuracy"
                       else f"{s}, drop {x:.3f} {m}"
                       for s, x, m in zip(d["lossy [CI]"], d["lossy_drop"].astype(float), d["metric"], strict=True)]  # fmt: skip
    d = d.assign(method=who(d) + " " + d["task"], n=d["n_samples"])
    against = ", ".join(sorted(d["baseline"].astype(str).unique()))
    out += [
        "Speculative decoding (the exits draft, one full-depth pass verifies: the full model's answers) beside "
        f"the lossy live point of the same method, engine, task and threshold; speedups against the {against}.",
        "",
        md_table(d[["method", "engine", "threshold", "acceptance_rate", "tokens_per_pass", "lossless [CI]",
                    "lossy [CI]", "n"]]),  # fmt: skip
        "",
    ]
    return out + links(b, {"speculative": "both baselines, quality, n_samples"})


def engine_targets_md(b: Built) -> list[str]:
    if "engine_targets" not in b.tables:
        return missing(b, "engine_targets") or ["**missing**", ""]
    s = b.tables["engine_targets_summary"].rename(columns={
        "meet_with_prefix": "meet measured / expected_with_prefix", "worst_with_prefix": "worst",
        "meet_decode_phase": "meet decode phase", "worst_decode_phase": "worst (decode phase)"})  # fmt: skip
    return figure(b, "engine_targets", "engine targets") + [
        f"Every timed point on clean test against two targets, each {TARGET_RATIO:g}: `measured / "
        "expected_with_prefix` (the whole decode, the prefix priced at its measured time) and the decode phase "
        "alone, `lm_measured_over_expected` = ((full - prefix) / (early - prefix)) / expected. Batched points are "
        "judged against their batch's own count in Batches; here against the per-row count.",
        "",
        md_table(s),
        "",
    ] + links(b, {"engine_targets": "every point with both ratios"})


def scale_md(b: Built) -> list[str]:
    out = []
    if "blip2_scale" in b.tables:
        d = b.tables["blip2_scale"]
        cols = [c for c in ("model", "method", "questions", "prefix_share", "exit_layer", "measured_speedup",
                            "expected_speedup", "exit_check_ms") if c in d.columns]  # fmt: skip
        out += ["### Measured at BLIP-2 size", "",
                "Random-init BLIP-2 OPT-2.7b / Flan-T5-XL built from config (`scale/`, "
                "`tests/benchmarks/bench_scale.py`), batch 1, eager engine; each method's earliest exit on every "
                "token against the full model timed beside it: the cost structure's numbers, not an operating "
                "point (random weights).", "", md_table(d[cols]), ""]  # fmt: skip
        out += links(b, {"blip2_scale": "with the full and exit latencies"})
    if "blip2_replay" in b.tables:
        d = b.tables["blip2_replay"]
        cols = ["model", "method", "engine", "source", "measured_speedup", "expected_with_prefix",
                "measured_over_expected_with_prefix", "lm_measured_over_expected"]  # fmt: skip
        out += ["### Replayed at BLIP-2 size", "",
                "The per-token exit depths live sweeps recorded, mapped by depth fraction onto the random-init "
                "model and decoded there (`generate(..., schedule=...)`), the full model and the prefix timed "
                "beside each question, CUDA events, batch 1.", "", md_table(d[[c for c in cols if c in d]]), ""]  # fmt: skip
        out += links(b, {"blip2_replay": "with the mapping, tokens, prefix share and projected speedup"})
    elif "blip2_replay" in b.missing:
        out += [f"Replayed depths at BLIP-2 size: **missing** ({b.missing['blip2_replay']})", ""]
    if "projection" in b.tables:
        d = b.tables["projection"].assign(method=lambda x: who(x))
        cols = ["method", "kv_policy", "engine", "threshold", "measured_speedup", "expected_speedup",
                "projected_speedup"]  # fmt: skip
        out += ["### A projection, not a measurement", "",
                "The exit depths of each timed batch-1 point priced with the per-layer, fixed per-token and "
                "per-check costs the engine benchmarks measured on BLIP-2 OPT-2.7b's LM shape on the same GPU "
                "(`analyses.projection`); the prefix is left out, which flatters every projection.", "",
                md_table(d[cols]), ""]  # fmt: skip
        out += links(b, {"projection": "with the costs and depths used"})
    elif "projection" in b.missing:
        out += [f"Projection to a larger decoder: **missing** ({b.missing['projection']})", ""]
    if "scale" in b.missing:
        out = [f"Measured at BLIP-2 size: **missing** ({b.missing['scale']})", ""] + out
    return out


def sweep_cost_md(b: Built) -> list[str]:
    if "simulated_sweep_cost" not in b.tables:
        return [f"**missing**: {b.missing.get('sweep_cost', 'not computed')}", ""]
    d = b.tables["simulated_sweep_cost"]
    over = d[~d["within_target"].astype(bool)]
    shown = "; ".join(f"{r.sweep} ({r.task}) {r.sweep_over_record:.2f}x" for r in over.itertuples())
    return [
        f"The recording pass, then every threshold offline; target <= {TARGET}x the pass: {summary(d)}."
        + (f" Over the target: {shown}." if shown else ""),
        "",
    ] + links(b, {"simulated_sweep_cost": "seconds per sweep and both ratios"})
