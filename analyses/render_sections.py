"""REPORT.md's quality sections: the backbone, the exits, overthinking, mid-crisis, robustness, and the
guarantees and attacks. Each shows its figure first and at most a narrow table; the wide tables are linked
in tables/."""

from __future__ import annotations

import numpy as np

from analyses.built import Built
from analyses.render_md import figure, fmt, links, md_table, missing, who, with_ci


def backbone_md(b: Built) -> list[str]:
    q = b.res.quality
    if q is None:
        return ["**missing**: backbone/quality.json is not in this results folder", ""]
    out = figure(b, "backbone_logit_lens", "logit lens")
    acc = q.get("vqa_accuracy")
    out += [f"VQA accuracy ({q.get('split', '?')} split, {q.get('vqa_rows', '?')} questions): {fmt(acc)}.", ""]
    if "backbone_logit_lens" in b.tables:
        lens = b.tables["backbone_logit_lens"]
        top = lens.loc[lens["accuracy"].idxmax()]
        out += [f"Logit lens (final norm + LM head on each layer's hidden state): {lens['accuracy'].iloc[0]:.3f} at "
                f"layer {int(lens['layer'].iloc[0])}, best {top['accuracy']:.3f} at layer {int(top['layer'])}, "
                f"{lens['accuracy'].iloc[-1]:.3f} at the last.", ""]  # fmt: skip
    else:
        out += ["Logit lens: **missing** (quality.json has no logit_lens)", ""]
    if "backbone_captions" in b.tables:
        caps = b.tables["backbone_captions"].iloc[0]
        out += ["Caption scores: " + ", ".join(f"{k} {fmt(v)}" for k, v in caps.items()) + ".", ""]
    else:
        out += [f"Caption scores: **missing** ({b.missing.get('backbone_captions', 'not in quality.json')})", ""]
    if "backbone_vqa_by_type" in b.tables:
        out += [md_table(b.tables["backbone_vqa_by_type"]), ""]
    return out + links(b, {"backbone_vqa_by_type": "per question type", "backbone_logit_lens": "per layer",
                           "backbone_captions": "caption scores"})  # fmt: skip


def exits_md(b: Built) -> list[str]:
    out = missing(b, "exits")
    if "exits_cider_test" in b.missing:
        out += [f"Per-exit CIDEr: **missing** ({b.missing['exits_cider_test']})", ""]
    if "exits_training" in b.tables:
        out += ["Training time per exits run (seconds; `wall_seconds` is the last process's, from its resume "
                "where `resumed_at_steps` names one):", "", md_table(b.tables["exits_training"]), ""]  # fmt: skip
    return out + links(b, {"exits_accuracy_test": "teacher-forced VQA accuracy of every exit on test, drawn in "
                           "Mid-crisis", "exits_cider_test": "CIDEr of every exit on test",
                           "exits_training": "training time"})  # fmt: skip


def overthinking_md(b: Built) -> list[str]:
    out = figure(b, "overthinking_by_layer", "overthinking by layer") + missing(b, "overthinking")
    if "overthinking" in b.tables:
        d = with_ci(b.tables["overthinking"], {"overthinking_rate": ("overthinking rate", "%")})
        cols = ["method", "regime", "n", "depth", "final_accuracy", "overthinking rate", "oracle_accuracy"]
        out += [md_table(d[cols + ["oracle_expected_speedup"]]), ""]
    return out + links(b, {"overthinking": "with CIs", "overthinking_by_layer": "per layer"})


def midcrisis_md(b: Built) -> list[str]:
    out = figure(b, "midcrisis_layers", "per-layer exit accuracy") + missing(b, "midcrisis")
    if "midcrisis_dip" in b.tables:
        d = with_ci(b.tables["midcrisis_dip"], {"dip": ("dip", "pts")})
        cols = ["method", "regime", "depth", "middle_first", "middle_last", "dip", "dip_layer"]
        out += [md_table(d[cols + ["peak_layer"]]), ""]
    return out + links(b, {"midcrisis_layers": "per-layer accuracy with CIs and the logit lens",
                           "midcrisis_dip": "with CIs"})  # fmt: skip


def robustness_md(b: Built) -> list[str]:
    if "robustness" not in b.tables:
        return missing(b, "robustness") or ["**missing**", ""]
    op = b.tables["robustness_operating"]
    how = "calibrated on clean val" if "meets_drop" in op.columns else "the thresholds the shifted sweeps ran at"
    points = "; ".join(f"{w} {t:g}" for w, t in zip(who(op), op["threshold"], strict=True))
    out = figure(b, "robustness_heatmap", "robustness") + [f"Operating points ({how}): {points}.", ""]
    if "robustness_drop_ci" not in b.tables:
        out += [f"Drop with CIs: **missing** ({b.missing.get('robustness_drop_ci', 'not computed')})", ""]
    else:
        d = with_ci(b.tables["robustness_drop_ci"], {"drop": ("drop [CI]", "pts"), "diff": ("drop - FREE's [CI]", "pts")})
        d.loc[d["diff"].isna(), "drop - FREE's [CI]"] = ""
        d["vs"] = np.where(d["vs_free"] != "", "free-" + d["vs_free"].astype(str), "")
        d["method"] = who(d)
        cols = ["method", "task", "n_samples", "n_shifts", "clean_value", "drop [CI]", "vs", "drop - FREE's [CI]"]
        out += [
            "Drop vs clean test: the mean of clean minus shifted over every perturbation x severity (`n_shifts`) of "
            "the same `n_samples` test questions, paired by question and resampled alike for every method, so `drop "
            "- FREE's` (above 0: FREE drops less) is a paired comparison. The full model is shown for reference; "
            "test_novel (other questions, unpaired) is in the table file.",
            "",
            md_table(d[cols]),
            "",
        ]
    return out + links(b, {"robustness_drop_ci": "with test_novel", "robustness_drop_by_shift": "the mean drop per "
                           "perturbation x severity, one column each", "robustness": "every shift, long",
                           "robustness_operating": "the operating points"})  # fmt: skip


def guarantees_md(b: Built) -> list[str]:
    out = ["### Thresholds with a guarantee (Learn-then-Test)", ""]
    if "calibration" in b.tables:
        c = b.tables["calibration"]
        first = c.iloc[0]
        out += figure(b, "calibration_shifts", "calibration under shift") + [
            f"Each run's threshold certified on val by fixed-sequence testing with Hoeffding-Bentkus p-values "
            f"(`free-bench calibrate`): risk `{first['risk_kind']}` <= {first['epsilon']:g} with probability >= "
            f"{1 - first['delta']:g}. The same threshold's risk on test and under every perturbation x severity: a "
            "guarantee made on clean val promises nothing under shift (`shifts_broken`).",
            "",
        ]
        shifts = [f"{int(k)} of {int(n)}" for k, n in zip(c["shifts_broken"], c["shifts"], strict=True)]
        d = c.assign(shifts_broken=shifts)
        cols = ["run", "threshold", "calibration_risk", "test_risk", "test_holds", "test_expected_speedup",
                "shifts_broken", "worst_shift"]  # fmt: skip
        out += [md_table(d[cols]), ""]
        out += links(b, {"calibration": "every column", "calibration_shifts": "the risk per input"})
    else:
        out += missing(b, "calibration") or ["**missing**", ""]
    out += ["### Slowdown attack", ""]
    if "attack" not in b.tables:
        return out + (missing(b, "attack") or ["**missing**", ""])
    a = b.tables["attack"]
    if "attack_ci" in b.tables:
        a = a.merge(b.tables["attack_ci"], on="run", how="left")
    a = with_ci(a, {"speedup_taken": ("gain taken [CI]", "%")})
    cols = ["run", "clean_accuracy", "attacked_accuracy", "clean_expected_speedup", "attacked_expected_speedup",
            "clean_measured_speedup", "attacked_measured_speedup", "gain taken [CI]"]  # fmt: skip
    out += [
        "Projected gradient steps on the pixels within an L-inf budget, lowering every exit's confidence by the "
        "method's own rule (`free-bench attack`), at each run's val operating point; `gain taken`: the share of "
        "the clean expected speedup's gain the attack removes.",
        "",
        md_table(a[[c for c in cols if c in a.columns]]),
        "",
    ]
    return out + links(b, {"attack": "every column", "attack_ci": "CIs, and each baseline's minus FREE's"})

