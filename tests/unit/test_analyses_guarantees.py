"""The guarantees tables: certified thresholds and where they break under shift, and the attack's toll."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analyses.guarantees import (
    compute_attack,
    compute_attack_ci,
    compute_calibration,
    compute_calibration_shifts,
    load_attack,
    load_calibration,
    verdict_compute_robustness,
)


def _calibration(root, run, method, risks):
    folder = root / "calibration" / run
    folder.mkdir(parents=True)
    (folder / "calibration.json").write_text(json.dumps({
        "method": method, "regime": "semi", "risk": "consistency", "epsilon": 0.1, "delta": 0.1, "n": 200,
        "threshold": 0.8, "calibration_risk": 0.04, "calibration_expected_speedup": 1.9}))  # fmt: skip
    pd.DataFrame({"method": method, "split": "test", "perturbation": ["none", "gaussian_noise", "gaussian_noise", "typo"],
                  "severity": [0, 1, 5, 1], "threshold": 0.8, "n": 64, "risk": risks,
                  "holds": [r <= 0.1 for r in risks], "value": 0.7, "full_value": 0.72, "mean_exit_layer": 3.0,
                  "expected_speedup": 1.8}).to_parquet(folder / "evaluation.parquet")  # fmt: skip


def test_calibration_rows_count_the_shifts_that_break_the_guarantee(tmp_path):
    _calibration(tmp_path, "free-semi", "free", [0.05, 0.08, 0.3, 0.12])
    _calibration(tmp_path, "pabee-semi", "pabee", [0.02, 0.03, 0.04, 0.05])
    certs, evaluation = load_calibration(tmp_path)
    table = compute_calibration(certs, evaluation).set_index("run")
    assert table.loc["free-semi", "test_risk"] == 0.05 and table.loc["free-semi", "test_holds"]
    assert table.loc["free-semi", "shifts_broken"] == 2 and table.loc["free-semi", "shifts"] == 3
    assert table.loc["free-semi", "worst_shift"] == "gaussian_noise:5"
    assert table.loc["pabee-semi", "shifts_broken"] == 0
    wide = compute_calibration_shifts(evaluation).set_index("run")
    assert list(wide.columns) == ["method", "clean", "gaussian_noise:1", "gaussian_noise:5", "typo:1"]
    assert wide.loc["free-semi", "gaussian_noise:5"] == 0.3


def _attack(root, run, method, clean_cost, hit_cost, n=40):
    folder = root / "attack" / run
    folder.mkdir(parents=True)
    ids = [f"q{i}" for i in range(n)]
    rows = []
    for cond, cost in (("clean", clean_cost), ("attacked", hit_cost)):
        rows += [{"sample_id": q, "condition": cond, "cost_layers": c, "full_cost_layers": 8.0}
                 for q, c in zip(ids, cost, strict=True)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "attack_samples.parquet")
    s = pd.DataFrame(rows).groupby("condition")[["cost_layers", "full_cost_layers"]].sum()
    exp = s["full_cost_layers"] / s["cost_layers"]
    pd.DataFrame({"method": method, "condition": ["clean", "attacked"], "accuracy": [0.7, 0.6], "full_accuracy": 0.72,
                  "mean_exit_layer": [3.0, 6.0], "expected_speedup": [exp["clean"], exp["attacked"]],
                  "measured_speedup": [1.5, 1.1], "threshold": 0.8, "eps": 8 / 255, "steps": 10,
                  "n_samples": n}).to_parquet(folder / "attack.parquet")  # fmt: skip


def test_the_attack_toll_and_the_compute_verdict(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.uniform(3, 5, 40)
    _attack(tmp_path, "free-semi", "free", clean, clean + 0.5)  # FREE keeps most of its speedup
    _attack(tmp_path, "deebert-semi", "deebert", clean, np.full(40, 8.0))  # deebert loses all of it
    attack, samples = load_attack(tmp_path)
    table = compute_attack(attack).set_index("run")
    gain = table.loc["free-semi", "clean_expected_speedup"]
    hit = table.loc["free-semi", "attacked_expected_speedup"]
    assert table.loc["free-semi", "speedup_taken"] == pytest.approx((gain - hit) / (gain - 1))
    assert table.loc["deebert-semi", "speedup_taken"] == pytest.approx(1.0)
    ci = compute_attack_ci(samples, n_boot=200, seed=0).set_index("run")
    assert ci.loc["free-semi", "speedup_taken_lo"] <= table.loc["free-semi", "speedup_taken"] <= ci.loc[
        "free-semi", "speedup_taken_hi"]
    assert ci.loc["deebert-semi", "minus_free_lo"] > 0
    verdict, evidence = verdict_compute_robustness(table.reset_index(), ci.reset_index())
    assert verdict == "holds" and "deebert-semi" in evidence
    assert verdict_compute_robustness(None, None, "no attack")[0] == "not measured"
    # the same toll for FREE as for the baseline: no verdict either way
    _attack(tmp_path / "same", "free-semi", "free", clean, np.full(40, 8.0))
    _attack(tmp_path / "same", "deebert-semi", "deebert", clean, np.full(40, 8.0))
    attack, samples = load_attack(tmp_path / "same")
    verdict, _ = verdict_compute_robustness(compute_attack(attack), compute_attack_ci(samples, n_boot=200))
    assert verdict == "within noise"
    # a baseline that never sped up has nothing to lose: no verdict, not "holds"
    _attack(tmp_path / "none", "free-semi", "free", clean, clean + 0.5)
    _attack(tmp_path / "none", "deebert-semi", "deebert", np.full(40, 9.0), np.full(40, 9.0))
    attack, samples = load_attack(tmp_path / "none")
    verdict, _ = verdict_compute_robustness(compute_attack(attack), compute_attack_ci(samples, n_boot=200))
    assert verdict == "inconclusive"
