"""`analyses.speculative` and `analyses.summary` on hand-made curves: lossless points beside their lossy
twins, the captions target's verdict, each method's best point and the claims' headlines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyses.speculative import compute_speculative, verdict_speculative
from analyses.summary import claim_headlines, compute_best_points

BASE = dict(regime="semi", kv_policy="propagate", batch_size=1, split="test", perturbation="none",
            timer="cuda_event")  # fmt: skip
FASTEST = "fastest full model (graphs)"


def _row(method: str, engine: str, task: str, threshold: float, value: float, measured: float, lo: float,
         baseline: str = FASTEST, **kw: object) -> dict:  # fmt: skip
    metric = "vqa_accuracy" if task == "vqa" else "CIDEr"
    return {**BASE, "method": method, "engine": engine, "task": task, "metric": metric, "threshold": threshold,
            "value": value, "measured_speedup": measured, "measured_speedup_lo": lo,
            "measured_speedup_hi": lo + 0.2, "baseline": baseline, "n_samples": 50} | kw  # fmt: skip


def _curves(caption_lo: float = 1.55) -> pd.DataFrame:
    return pd.DataFrame([
        _row("full", "graphs", "caption", 24.0, 2.0, 1.0, 1.0),
        _row("free", "graphs", "caption", 0.8, 1.9, 2.0, 1.8),  # lossy: 0.1 CIDEr below the full model
        _row("free", "graphs-speculative", "caption", 0.8, 2.0, 1.6, caption_lo, acceptance_rate=0.7,
             tokens_per_pass=2.5),
        _row("free", "graphs-speculative", "caption", 0.9, 2.0, 1.3, 1.2, acceptance_rate=0.9, tokens_per_pass=3.0),
    ])  # fmt: skip


def test_each_lossless_point_sits_beside_its_lossy_twin() -> None:
    spec = compute_speculative(_curves()).set_index("threshold")
    assert len(spec) == 2
    assert spec.loc[0.8, "lossy_engine"] == "graphs" and spec.loc[0.8, "lossy_speedup"] == pytest.approx(2.0)
    assert spec.loc[0.8, "lossy_drop"] == pytest.approx(0.1) and spec.loc[0.8, "acceptance_rate"] == 0.7
    assert np.isnan(spec.loc[0.9, "lossy_speedup"])  # no lossy point at 0.9: missing, not invented
    with pytest.raises(ValueError, match="speculatively"):
        compute_speculative(_curves()[lambda d: d["engine"] == "graphs"])


def test_the_captions_target_verdict() -> None:
    verdict, sentence = verdict_speculative(compute_speculative(_curves(caption_lo=1.55)))
    assert verdict == "holds" and "1.60x [1.55, 1.75]" in sentence and FASTEST in sentence
    assert verdict_speculative(compute_speculative(_curves(caption_lo=1.45)))[0] == "does not hold"
    vqa_only = compute_speculative(_curves().assign(task="vqa", metric="vqa_accuracy"))
    verdict, sentence = verdict_speculative(vqa_only)
    assert verdict == "not measured" and "caption" in sentence  # no caption rows: not measured
    assert verdict_speculative(None, "no speculative sweep here")[0] == "not measured"


def _best(method: str, engine: str, value: float, measured: float, baseline: str, **kw: object) -> dict:
    return {**BASE, "method": method, "engine": engine, "task": "vqa", "metric": "vqa_accuracy", "threshold": 0.7,
            "value": value, "full_value": 0.88, "drop": 0.88 - value, "meets_drop": 0.88 - value <= 0.01,
            "measured_speedup": measured, "measured_speedup_lo": measured - 0.05,
            "measured_speedup_hi": measured + 0.05, "expected_speedup": 2.2, "baseline": baseline,
            "n_samples": 100} | kw  # fmt: skip


def test_best_points_take_the_fastest_baseline_and_keep_simulated_only_methods() -> None:
    measured = pd.DataFrame([
        _best("free", "eager", 0.88, 1.66, "own engine (eager)"),
        _best("free", "eager", 0.88, 0.21, FASTEST), _best("free", "graphs", 0.88, 1.39, FASTEST),
        _best("deebert", "graphs", 0.86, 1.61, FASTEST),  # 2 points below: its best-quality point, flagged
        _best("pabee", "eager", 0.88, 1.2, "own engine (eager)", batch_size=8),  # timed batched only
    ])  # fmt: skip
    expected = pd.DataFrame([_best("free", "none", 0.87, np.nan, "", timer="none", expected_speedup=2.3),
                             _best("distill", "none", 0.875, np.nan, "", timer="none", regime="unsupervised",
                                   expected_speedup=2.5)])  # fmt: skip
    got = compute_best_points(measured, expected, 0.01).set_index(["method", "regime"])
    assert got.loc[("free", "semi"), "engine"] == "graphs"
    assert got.loc[("free", "semi"), "measured_speedup"] == pytest.approx(1.39)  # not the own-engine 1.66
    assert not got.loc[("deebert", "semi"), "meets_drop"]
    assert got.loc[("pabee", "semi"), "baseline"] == "own engine (eager)"  # labelled, not passed off as fastest
    sim = got.loc[("distill", "unsupervised")]
    assert np.isnan(sim["measured_speedup"]) and sim["baseline"].startswith("not timed")
    assert sim["expected_speedup"] == pytest.approx(2.5) and len(got) == 4  # free's simulated row: not twice


def test_claim_headlines_give_the_numbers_with_their_cis() -> None:
    best = pd.DataFrame([_best("free", "graphs", 0.88, 1.39, FASTEST)])
    dips = pd.DataFrame({"method": ["free"], "regime": ["semi"], "dip": [0.02], "dip_lo": [0.01], "dip_hi": [0.03]})
    heads = claim_headlines({"speedup_best_measured": best, "midcrisis_dip": dips})
    assert heads[0].startswith("free-semi 1.39x [1.34, 1.44] measured") and FASTEST in heads[0]
    assert heads[1] == "dip free-semi 2.0 pts [1.0, 3.0]"
    assert heads[2:] == ["", "", ""]  # not measured: no number
