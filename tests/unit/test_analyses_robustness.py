"""`analyses.robustness` on a hand-made sweep: calibration on clean val, then a fixed operating point."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.claims import verdict_robustness  # noqa: E402
from analyses.robustness import (  # noqa: E402
    calibrate,
    compute_robustness,
    compute_robustness_ci,
    parse_perturbation,
    plot_robustness_heatmap,
)


def _row(
    method: str, threshold: float, value: float, split: str = "val", perturbation: str = "none", **kw
) -> dict:
    speed = 1.0 if method == "full" else 1.0 + threshold  # faster with a larger threshold, by construction
    return {
        "method": method,
        "regime": "semi",
        "kv_policy": "propagate",
        "batch_size": 1,
        "task": "vqa",
        "split": split,
        "perturbation": perturbation,
        "metric": "vqa_accuracy",
        "threshold": threshold,
        "value": value,
        "expected_speedup": speed,
        "measured_speedup": speed * 0.8,
        "mean_exit_layer": 24.0 / speed,
    } | kw


def _val() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _row("full", 24.0, 0.80),
            _row("free", 0.5, 0.795),
            _row("free", 0.7, 0.792),  # fastest within a point of 0.80
            _row("free", 0.9, 0.75),
            _row("deebert", 0.5, 0.78),  # best of a method that never gets within a point
            _row("deebert", 0.9, 0.70),
        ]
    )


def _test_rows() -> pd.DataFrame:
    rows = [
        _row("full", 24.0, 0.78, "test"),
        _row("full", 24.0, 0.70, "test", "blur:3"),
        _row("full", 24.0, 0.60, "test_novel"),
        _row("free", 0.7, 0.77, "test"),
        _row("free", 0.9, 0.70, "test"),  # not the operating point
        _row("free", 0.7 + 1e-12, 0.74, "test", "blur:1"),  # float noise on the threshold
        _row("free", 0.7, 0.65, "test", "blur:3"),
        _row("free", 0.7, 0.72, "test", "gaussian_noise:3"),
        _row("free", 0.7, 0.55, "test_novel"),
        _row("deebert", 0.5, 0.76, "test"),
        _row("deebert", 0.5, 0.60, "test", "blur:3"),
    ]
    return pd.DataFrame(rows)


def test_parse_perturbation() -> None:
    assert parse_perturbation("blur:3") == ("blur", 3)
    assert parse_perturbation("gaussian_noise:5") == ("gaussian_noise", 5)
    assert parse_perturbation("none") == ("none", 0)
    for bad in ("blur", "blur:x", ":3", ""):
        with pytest.raises(ValueError, match="NAME:SEVERITY"):
            parse_perturbation(bad)


def test_calibrate_picks_fastest_threshold_within_the_drop_and_flags_misses() -> None:
    op = calibrate(_val(), max_drop=0.01).set_index("method")
    assert set(op.index) == {"free", "deebert"}
    assert op.loc["free", "threshold"] == 0.7 and bool(op.loc["free", "meets_drop"])
    assert op.loc["free", "drop"] == pytest.approx(0.008)
    assert op.loc["deebert", "threshold"] == 0.5 and not bool(op.loc["deebert", "meets_drop"])
    assert calibrate(_val(), max_drop=0.001).set_index("method").loc["free", "threshold"] == 0.5


def test_calibrate_uses_val_only_and_averages_seeds() -> None:
    seeds = pd.concat([_val().assign(seed=0), _val().assign(seed=1, value=_val()["value"] - 0.004)])
    op = calibrate(pd.concat([seeds, _test_rows().assign(seed=0)]), max_drop=0.01).set_index("method")
    assert op.loc["free", "value"] == pytest.approx(0.79) and op.loc["free", "full_value"] == pytest.approx(
        0.798
    )
    assert op.loc["free", "threshold"] == 0.7


def test_robustness_at_the_operating_point() -> None:
    sweep = pd.concat([_val(), _test_rows()], ignore_index=True)
    robust = compute_robustness(sweep, calibrate(sweep))
    free = robust[robust["method"] == "free"].set_index(["split", "perturbation", "severity"])
    assert list(free.index) == [
        ("test", "blur", 1),
        ("test", "blur", 3),
        ("test", "gaussian_noise", 3),
        ("test", "none", 0),
        ("test_novel", "none", 0),
    ]
    assert (free["threshold"] == 0.7).all()
    assert free.loc[("test", "blur", 3), "drop_vs_clean"] == pytest.approx(0.77 - 0.65)
    assert free.loc[("test", "blur", 3), "full_value"] == pytest.approx(0.70)
    assert free.loc[("test", "blur", 3), "drop_vs_full"] == pytest.approx(0.70 - 0.65)
    assert free.loc[("test", "none", 0), "drop_vs_clean"] == pytest.approx(0.0)
    assert free.loc[("test_novel", "none", 0), "drop_vs_full"] == pytest.approx(0.60 - 0.55)
    assert pd.isna(free.loc[("test", "blur", 1), "full_value"])  # no full row there: not invented
    assert free.loc[("test", "blur", 1), "measured_speedup"] == pytest.approx(1.7 * 0.8)
    assert robust["severity"].dtype.kind == "i" and "full" not in set(robust["method"])
    deebert = robust[robust["method"] == "deebert"].set_index("perturbation")
    assert deebert.loc["blur", "drop_vs_clean"] == pytest.approx(0.16)


def test_malformed_input_is_refused() -> None:
    sweep = pd.concat([_val(), _test_rows()], ignore_index=True)
    with pytest.raises(ValueError, match="mean_exit_layer"):
        calibrate(sweep.drop(columns="mean_exit_layer"))
    with pytest.raises(ValueError, match="empty"):
        calibrate(sweep.iloc[:0])
    with pytest.raises(ValueError, match="clean val"):
        calibrate(_test_rows())
    with pytest.raises(ValueError, match="full-model"):
        calibrate(_val()[lambda d: d["method"] != "full"])
    with pytest.raises(ValueError, match="threshold"):
        compute_robustness(sweep, calibrate(sweep).drop(columns="threshold"))
    with pytest.raises(ValueError, match="operating thresholds"):
        compute_robustness(sweep, calibrate(sweep).assign(threshold=0.123))
    with pytest.raises(ValueError, match="NAME:SEVERITY"):
        compute_robustness(
            sweep.assign(perturbation=sweep["perturbation"].replace("blur:3", "blur")), calibrate(sweep)
        )


def test_heatmaps_one_method_and_methods_at_a_severity() -> None:
    sweep = pd.concat([_val(), _test_rows()], ignore_index=True)
    robust = compute_robustness(sweep, calibrate(sweep))
    fig, ax = plt.subplots()
    assert plot_robustness_heatmap(robust, ax, method="free") is ax
    assert [t.get_text() for t in ax.get_yticklabels()] == ["blur", "gaussian_noise"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "3"]  # 0 = clean test
    assert len(ax.texts) == 5  # annotated cells: 2 clean + blur 1, blur 3, noise 3
    ax = plot_robustness_heatmap(robust, plt.subplots()[1], value="drop_vs_clean")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["deebert", "free"]
    assert "severity 3" in ax.get_title()
    with pytest.raises(ValueError, match="ghost"):
        plot_robustness_heatmap(robust, ax, method="ghost")
    with pytest.raises(ValueError, match="BLEU"):
        plot_robustness_heatmap(robust, ax, metric="BLEU")
    with pytest.raises(ValueError, match="speedup_x"):
        plot_robustness_heatmap(robust, ax, value="speedup_x")
    plt.close("all")


def test_importing_robustness_leaves_torch_out() -> None:
    code = "import sys, analyses.robustness; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


N_IDS = 40
SHIFTS = ("blur:1", "blur:3")
OPERATING = pd.DataFrame(
    {
        "method": ["free", "deebert"],
        "regime": "semi",
        "task": "vqa",
        "metric": "vqa_accuracy",
        "threshold": [0.7, 0.5],
    }
)


def _sample_rows(
    method: str, threshold: float, split: str, perturbation: str, values: np.ndarray
) -> pd.DataFrame:
    prefix = "n" if split == "test_novel" else "q"
    return pd.DataFrame(
        {
            "method": method,
            "regime": "semi",
            "task": "vqa",
            "threshold": threshold,
            "split": split,
            "perturbation": perturbation,
            "sample_id": [f"{prefix}{i}" for i in range(len(values))],
            "value": np.asarray(values, dtype=float),
        }
    )


def _ci_samples(free_drop: np.ndarray, deebert_drop: np.ndarray, novel: float = 0.2) -> pd.DataFrame:
    """Clean test all 1.0, each shift scores 1 - drop per question (the same drops under every shift);
    test_novel (other questions) scores `novel`; the full model drops nothing; one val row to ignore."""
    parts = []
    for method, t, drop in (
        ("free", 0.7, free_drop),
        ("deebert", 0.5, deebert_drop),
        ("full", 4.0, 0 * free_drop),
    ):
        parts.append(_sample_rows(method, t, "test", "none", np.ones(N_IDS)))
        parts += [_sample_rows(method, t, "test", p, 1.0 - drop) for p in SHIFTS]
        parts.append(_sample_rows(method, t, "test_novel", "none", np.full(N_IDS // 2, novel)))
        parts.append(_sample_rows(method, t, "val", "blur:1", np.zeros(N_IDS)))  # val is never read
    parts.append(_sample_rows("free", 0.9, "test", "blur:1", np.zeros(N_IDS)))  # not the operating point
    rows = pd.concat(parts, ignore_index=True)
    return rows.sample(frac=1.0, random_state=0).reset_index(drop=True)  # pairing is by sample_id, not order


def test_robustness_ci_free_drops_nothing_deebert_half() -> None:
    half = np.tile([0.0, 1.0], N_IDS // 2)  # deebert's drop is 0 or 1 per question: 0.5 on average
    ci = compute_robustness_ci(_ci_samples(np.zeros(N_IDS), half), OPERATING, n_boot=400, seed=0)
    rows = ci.set_index("method")
    assert list(ci["method"]) == ["deebert", "free", "full"] and rows.loc["full", "regime"] == "none"
    assert (
        rows.loc["free", "drop"] == 0.0 and rows.loc["free", "drop_lo"] == rows.loc["free", "drop_hi"] == 0.0
    )
    assert rows.loc["deebert", "drop"] == pytest.approx(0.5)
    assert rows.loc["deebert", "drop_lo"] < 0.5 < rows.loc["deebert", "drop_hi"]
    assert rows.loc["deebert", "vs_free"] == "semi" and rows.loc["deebert", "diff"] == pytest.approx(0.5)
    assert 0.0 < rows.loc["deebert", "diff_lo"] < 0.5 < rows.loc["deebert", "diff_hi"]
    assert rows[["diff", "diff_lo", "diff_hi"]].loc[["free", "full"]].isna().all().all()
    assert (
        (ci["n_samples"] == N_IDS).all()
        and (ci["n_shifts"] == 2).all()
        and (ci["n_inputs"] == 2 * N_IDS).all()
    )
    # test_novel is other questions: apart from the paired drop, with its own mean and CI
    assert (ci["novel_n"] == N_IDS // 2).all() and np.allclose(ci["novel_value"], 0.2)
    assert np.allclose(ci["novel_drop"], 0.8) and np.allclose(ci["clean_value"], 1.0)
    verdict, sentence = verdict_robustness(None, ci=ci)
    assert verdict == "holds"
    assert "deebert-semi - free-semi 50.0 pts [" in sentence and "free-semi 0.0 pts [0.0, 0.0]" in sentence
    assert "test_novel" in sentence


def test_robustness_ci_pairs_methods_and_judges_noise() -> None:
    rng = np.random.default_rng(1)
    same = rng.choice([0.0, 1.0], N_IDS)  # noisy drops, identical per question for both methods
    ci = compute_robustness_ci(_ci_samples(same, same), OPERATING, n_boot=200, seed=0)
    deebert = ci.set_index("method").loc["deebert"]
    assert deebert["drop_hi"] - deebert["drop_lo"] > 0.1  # each drop is noisy ...
    assert deebert["diff_lo"] == deebert["diff_hi"] == 0.0  # ... but the paired difference is not
    assert verdict_robustness(None, ci=ci)[0] == "within noise"
    swapped = compute_robustness_ci(_ci_samples(np.full(N_IDS, 0.5), np.zeros(N_IDS)), OPERATING, n_boot=50)
    assert verdict_robustness(None, ci=swapped)[0] == "does not hold"


def test_robustness_without_samples_is_never_holds() -> None:
    sweep = pd.concat([_val(), _test_rows()], ignore_index=True)
    robust = compute_robustness(sweep, calibrate(sweep))
    verdict, sentence = verdict_robustness(robust)  # FREE's mean drop is the lower one here
    assert verdict == "inconclusive (no per-sample data)" and "no CI" in sentence
    assert verdict_robustness(robust, ci=pd.DataFrame())[0] == verdict
    only_free = compute_robustness_ci(
        _ci_samples(np.zeros(N_IDS), np.zeros(N_IDS)).query("method != 'deebert'"), OPERATING, n_boot=20
    )
    verdict, sentence = verdict_robustness(robust, ci=only_free)  # deebert has means but no samples
    assert verdict != "holds" and "no per-sample data" in sentence


def test_robustness_ci_refuses_bad_input() -> None:
    samples = _ci_samples(np.zeros(N_IDS), np.zeros(N_IDS))
    with pytest.raises(ValueError, match="operating thresholds"):
        compute_robustness_ci(samples, OPERATING.assign(threshold=0.123))
    with pytest.raises(ValueError, match="several operating thresholds"):
        compute_robustness_ci(samples, pd.concat([OPERATING, OPERATING.assign(threshold=0.9, metric="x")]))
    with pytest.raises(ValueError, match="sample_id"):
        compute_robustness_ci(samples.drop(columns="sample_id"), OPERATING)
    with pytest.raises(ValueError, match="NAME:SEVERITY"):
        compute_robustness_ci(samples.replace({"perturbation": {"blur:3": "blur"}}), OPERATING)
