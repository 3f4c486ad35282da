"""`analyses.report`: the whole report on tiny hand-made results folders, and the claim verdicts on
hand-made frames."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses.load import load_results
from analyses.report import (
    build_report,
    verdict_dip,
    verdict_overthinking,
    verdict_robustness,
    verdict_speedup,
)

DEPTH = 4
N_Q = 24
CLAIM = re.compile(r'^\d\. \*\*"(?P<claim>[^"]+)"\*\*: verdict \*\*(?P<verdict>[^*]+)\*\*', re.M)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _per_exit(method: str, regime: str, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for q in range(N_Q):
        for layer in range(1, DEPTH + 1):
            rows.append((f"q{q}", layer, "exit", float(rng.choice([0.0, 1 / 3, 1.0]))))
        rows.append((f"q{q}", DEPTH, "final", float(rng.choice([0.0, 1.0]))))
    df = pd.DataFrame(rows, columns=["question_id", "layer", "exit_kind", "accuracy"])
    return df.assign(
        question_type="color",
        prediction="red",
        confidence=0.5,
        split="test",
        method=method,
        regime=regime,
    )


def _sweep_rows(method: str, timer: str, split: str = "test", perturbation: str = "none", **kw) -> list:
    """Rows of one sweep: the method at three thresholds (faster, worse with a lower one) + the full model."""
    task = kw.get("task", "vqa")
    metric = "vqa_accuracy" if task == "vqa" else "CIDEr"
    base = 0.8 - (0.1 if perturbation != "none" else 0.0) - kw.pop("worse", 0.0)
    rows = [("full", float(DEPTH), base, 1.0)]
    rows += [(method, t, base - 0.02 * (0.9 - t) * 10, 1.0 + (1.0 - t) * 2) for t in (0.5, 0.7, 0.9)]
    out = []
    for m, t, v, speed in rows:
        out.append(
            {
                "method": m,
                "regime": "semi",
                "kv_policy": "propagate",
                "threshold": t,
                "batch_size": kw.get("batch_size", 1),
                "task": task,
                "split": split,
                "perturbation": perturbation,
                "metric": metric,
                "value": v,
                "expected_speedup": speed,
                "measured_speedup": np.nan if timer == "none" else 1.0 + (speed - 1.0) * 0.7,
                "latency_ms_median": np.nan if timer == "none" else 10.0 / speed,
                "latency_ms_p90": np.nan if timer == "none" else 12.0 / speed,
                "mean_exit_layer": DEPTH / speed,
                "exit_layer_hist": "{}",
                "timer": timer,
                "device": "cpu-test" if timer != "cuda_event" else "gpu-test",
            }
        )
    return out


def _samples(sweep: pd.DataFrame, rng: np.random.Generator, exact: bool = False) -> pd.DataFrame:
    """12 questions per row, each scoring 0 or 1 at random around the row's value; with `exact`, the first
    round(12 * value) questions score 1 and the rest 0 (so rows of one sweep are paired question by question)."""
    keys = ["method", "regime", "kv_policy", "threshold", "batch_size", "task", "split", "perturbation"]
    timed = sweep["timer"].iloc[0] != "none"
    parts = []
    for _, r in sweep.iterrows():
        n = 12
        hits = (np.arange(n) < round(n * r["value"])).astype(float)
        cost = np.full(n, DEPTH / r["expected_speedup"])
        lat = rng.uniform(5, 15, n) / (r["measured_speedup"] if timed else 1.0)
        parts.append(
            pd.DataFrame(
                {
                    **{k: r[k] for k in keys},
                    "sample_id": [f"q{i}" for i in range(n)],
                    "value": hits if exact else rng.choice([0.0, 1.0], n, p=[1 - r["value"], r["value"]]),
                    "exit_layer_mean": cost,
                    "cost_layers": cost,
                    "full_cost_layers": np.full(n, float(DEPTH)),
                    "latency_ms": lat if timed else np.nan,
                    "full_latency_ms": lat * r["measured_speedup"] if timed else np.nan,
                    "batch": np.arange(n),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _write_sweep(
    root: Path, name: str, rows: list, rng: np.random.Generator, seed: int | None = None, exact: bool = False
) -> None:
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    sweep = pd.DataFrame(rows)
    sweep.to_parquet(folder / "sweep.parquet")
    _samples(sweep, rng, exact).to_parquet(folder / "samples.parquet")
    _write_json(
        folder / "manifest.json",
        {"spec": {"compact": True}, "timings": {}} | ({"seed": seed} if seed is not None else {}),
    )


def make_results(root: Path, perturbed: bool = False, gpu_timed: bool = False, exits: bool = True) -> Path:
    """A tiny results folder: backbone quality, two exits runs, simulated + timed VQA and caption sweeps."""
    rng = np.random.default_rng(0)
    _write_json(
        root / "manifest.json",
        {"kind": "reproduce", "config": {"profile": "tiny"}, "device": "cpu-test", "git_commit": "abc123"},
    )
    lens = {str(layer): 0.2 * layer for layer in range(1, DEPTH + 1)}
    _write_json(
        root / "backbone" / "quality.json",
        {"vqa_accuracy": 0.8, "vqa_accuracy_by_type": {"color": 0.8}, "logit_lens": lens, "split": "test"},
    )
    if exits:
        for method in ("free", "deebert"):
            run = root / "exits" / f"{method}-semi"
            run.mkdir(parents=True)
            _per_exit(method, "semi", rng).to_parquet(run / "per_exit_test.parquet")
            _write_json(run / "manifest.json", {"train_seconds": 1.5, "config": {"regime": "semi"}})
    for method in ("free", "deebert"):
        _write_sweep(root, f"sim-{method}", _sweep_rows(method, "none", worse=0.0), rng)
        _write_sweep(root, f"live-{method}-b1", _sweep_rows(method, "cpu_wall"), rng)
    _write_sweep(root, "sim-free-s1", _sweep_rows("free", "none"), rng, seed=1)
    _write_sweep(root, "cap-sim", _sweep_rows("free", "none", task="caption"), rng)
    _write_sweep(root, "cap-live-b4", _sweep_rows("free", "cpu_wall", task="caption", batch_size=4), rng)
    if gpu_timed:
        _write_sweep(root, "live-free-gpu", _sweep_rows("free", "cuda_event", batch_size=2), rng)
    if perturbed:  # deebert loses 50 more points than FREE under noise: enough for a CI on 12 questions
        for method, worse in (("free", 0.0), ("deebert", 0.5)):
            _write_sweep(root, f"val-{method}", _sweep_rows(method, "none", split="val"), rng)
            rows = _sweep_rows(method, "none", perturbation="noise:1", worse=worse)
            rows += _sweep_rows(method, "none", split="test_novel", worse=worse)
            _write_sweep(root, f"rob-{method}", rows, rng, exact=True)
    return root


def _claims(report: Path) -> dict[str, str]:
    text = report.read_text().split("## The paper's claims", 1)[1]
    return {m["claim"]: m["verdict"] for m in CLAIM.finditer(text)}


def _section(report: Path, title: str) -> str:
    return report.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report on the base folder, shared by the tests that only read it."""
    return build_report(make_results(tmp_path_factory.mktemp("report") / "tiny"), n_boot=20, seed=0)


def test_build_report_writes_report_figures_and_tables(tiny_report: Path) -> None:
    report = tiny_report
    root = report.parent
    assert report.name == "REPORT.md"
    text = report.read_text()
    assert text.startswith("# FREE benchmark report: profile `tiny`, device cpu-test")
    assert "abc123" in text
    for stem in (
        "speedup_measured_vqa",
        "speedup_expected_vqa",
        "speedup_measured_caption",
        "speedup_expected_caption",
        "overthinking_by_layer",
        "midcrisis_layers",
    ):
        for ext in ("png", "pdf"):
            assert (root / "figures" / f"{stem}.{ext}").stat().st_size > 0, stem
        assert f"](figures/{stem}.png)" in text
    for name in (
        "speedup_curves",
        "speedup_best_measured",
        "speedup_best_expected",
        "speedup_auc_expected",
        "overthinking",
        "overthinking_by_layer",
        "midcrisis_layers",
        "midcrisis_dip",
        "exits_accuracy_test",
        "exits_training",
        "claims",
    ):
        assert len(pd.read_csv(root / "tables" / f"{name}.csv")) > 0, name
    assert not list(root.rglob(".*")), "a temporary file was left behind"
    claims = _claims(report)
    assert len(claims) == 5 and all(claims.values())
    # no attack tables in this folder: the compute-robustness verdict says so, and the parts are missing
    assert claims["FREE is more robust (compute: speedup kept under a slowdown attack)"] == "not measured"
    assert "- missing: calibration (" in text and "- missing: attack (" in text
    curves = pd.read_csv(root / "tables" / "speedup_curves.csv")
    sim_free = curves[(curves["method"] == "free") & (curves["timer"] == "none") & (curves["task"] == "vqa")]
    assert (sim_free["n_seeds"] == 2).all()  # sim-free and sim-free-s1 are averaged as two seeds
    timed_free = curves[
        (curves["method"] == "free") & (curves["timer"] == "cpu_wall") & (curves["task"] == "vqa")
    ]
    assert timed_free["measured_speedup_lo"].notna().all()  # CIs from samples.parquet


def test_robustness_missing_without_perturbed_sweeps(tiny_report: Path) -> None:
    report = tiny_report
    section = _section(report, "Robustness")
    assert "**missing**" in section and "no perturbed or test_novel sweeps" in section
    assert not re.search(r"\d", section), "a missing part must not show a number"
    assert _claims(report)["FREE is more robust"] == "not measured"
    assert not (report.parent / "figures" / "robustness_heatmap.png").exists()


def test_robustness_with_perturbed_sweeps(tmp_path: Path) -> None:
    root = make_results(tmp_path / "tiny", perturbed=True)
    report = build_report(root, n_boot=10)
    robust = pd.read_csv(root / "tables" / "robustness.csv")
    assert {"noise", "none"} <= set(robust["perturbation"]) and "test_novel" in set(robust["split"])
    assert (root / "figures" / "robustness_heatmap.png").exists()
    ci = pd.read_csv(root / "tables" / "robustness_drop_ci.csv").set_index("method")
    assert ci.loc["deebert", "vs_free"] == "semi" and ci.loc["deebert", "diff_lo"] > 0  # paired CI above 0
    assert "drop - FREE's [CI]" in _section(report, "Robustness")
    assert _claims(report)["FREE is more robust"] == "holds"  # deebert loses 50 more points under shift


def test_robustness_without_samples_gets_no_verdict(tmp_path: Path) -> None:
    root = make_results(tmp_path / "tiny", perturbed=True)
    for f in (root / "sweeps").glob("rob-*/samples.parquet"):
        f.unlink()  # the shifted sweeps keep their means only
    report = build_report(root, n_boot=10)
    assert _claims(report)["FREE is more robust"] == "inconclusive (no per-sample data)"
    assert "Drop with CIs: **missing** (not computed: samples has no perturbed" in _section(
        report, "Robustness"
    )


def test_cpu_and_gpu_timers_get_separate_measured_figures(tmp_path: Path) -> None:
    root = make_results(tmp_path / "tiny", gpu_timed=True)
    build_report(root, n_boot=10)
    figs = {p.name for p in (root / "figures").glob("speedup_measured_vqa*.png")}
    assert figs == {"speedup_measured_vqa_cpu_wall.png", "speedup_measured_vqa_cuda_event.png"}


def test_missing_exits_mark_parts_missing_and_rerun_removes_stale_outputs(tmp_path: Path) -> None:
    root = make_results(tmp_path / "tiny")
    build_report(root, n_boot=10)
    assert (root / "figures" / "overthinking_by_layer.png").exists()
    import shutil

    shutil.rmtree(root / "exits")
    report = build_report(root, n_boot=10)
    assert "**missing**" in _section(report, "Overthinking")
    assert not (root / "figures" / "overthinking_by_layer.png").exists()
    claims = _claims(report)
    assert claims["FREE reduces overthinking"] == "not measured"
    assert claims["FREE removes the mid-crisis dip"] == "not measured"


def test_bad_folders_raise_naming_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sweeps.*no exits"):
        build_report(tmp_path / "empty")


def test_exit_seeds_come_from_the_folder_suffix(tmp_path: Path) -> None:
    root = make_results(tmp_path / "tiny")
    (root / "exits" / "free-semi").rename(root / "exits" / "free-semi-s3")
    res = load_results(root)
    seeds = res.per_exit["test"].groupby("method")["seed"].unique()
    assert list(seeds["free"]) == [3] and list(seeds["deebert"]) == [0]


def _best(measured: float, lo: float = np.nan, expected: float = 2.0, meets: bool = True) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "method": "free",
                "regime": "semi",
                "task": "vqa",
                "batch_size": 1,
                "timer": "cuda_event",
                "split": "test",
                "perturbation": "none",
                "value": 0.80,
                "full_value": 0.805,
                "drop": 0.005 if meets else 0.03,
                "meets_drop": meets,
                "measured_speedup": measured,
                "measured_speedup_lo": lo,
                "measured_speedup_hi": lo + 0.1 if np.isfinite(lo) else np.nan,
                "expected_speedup": expected,
            }
        ]
    )


def test_verdict_speedup() -> None:
    assert verdict_speedup(_best(1.6, lo=1.55))[0] == "holds"
    assert verdict_speedup(_best(1.2, expected=1.2))[0] == "does not hold"
    assert verdict_speedup(_best(1.2, expected=2.0))[0] == "holds on expected speedup only"
    assert verdict_speedup(_best(1.6, lo=1.1))[0] == "inconclusive"
    assert verdict_speedup(_best(1.8, expected=1.0, meets=False))[0] == "does not hold"
    assert verdict_speedup(None, None)[0] == "not measured"
    expected_only = _best(np.nan, expected=1.7).assign(timer="none")
    verdict, sentence = verdict_speedup(None, expected_only)
    assert verdict == "holds on expected speedup only" and "1.70x" in sentence


def _with_ci(col: str, **values: tuple[float, float, float]) -> pd.DataFrame:
    """One semi row per method with `col` and its CI bounds (`col`_lo, `col`_hi)."""
    rows = [{"method": m, "regime": "semi", col: v, f"{col}_lo": lo, f"{col}_hi": hi}
            for m, (v, lo, hi) in values.items()]  # fmt: skip
    return pd.DataFrame(rows)


def _rates(**rates: tuple[float, float, float]) -> pd.DataFrame:
    return _with_ci("overthinking_rate", **rates)


def test_verdict_overthinking() -> None:
    assert verdict_overthinking(_rates(free=(0.05, 0.04, 0.06), deebert=(0.10, 0.08, 0.12)))[0] == "lower"
    assert verdict_overthinking(_rates(free=(0.10, 0.08, 0.12), deebert=(0.05, 0.04, 0.06)))[0] == "not lower"
    assert (
        verdict_overthinking(_rates(free=(0.06, 0.04, 0.09), deebert=(0.07, 0.05, 0.10)))[0] == "within noise"
    )
    assert verdict_overthinking(_rates(deebert=(0.07, 0.05, 0.10)))[0] == "not measured"


def _dips(**dips: tuple[float, float, float]) -> pd.DataFrame:
    return _with_ci("dip", **dips)


def test_verdict_dip() -> None:
    assert verdict_dip(_dips(free=(0.001, 0.0, 0.01), deebert=(0.05, 0.03, 0.07)))[0] == "holds"
    assert verdict_dip(_dips(free=(0.04, 0.02, 0.06), deebert=(0.05, 0.03, 0.07)))[0] == "does not hold"
    assert (
        verdict_dip(_dips(free=(0.01, 0.005, 0.02), deebert=(0.05, 0.03, 0.07)))[0] == "reduced, not removed"
    )
    assert verdict_dip(_dips(free=(0.0, 0.0, 0.0), deebert=(0.0, 0.0, 0.01)))[0] == "no dip to remove"
    assert verdict_dip(None)[0] == "not measured"
    lens_only = _dips(free=(0.0, 0.0, 0.0), logit_lens=(0.05, np.nan, np.nan))  # no DeeBERT: the lens, no CI
    verdict, sentence = verdict_dip(lens_only)
    assert verdict == "holds" and "logit lens" in sentence


def test_verdict_robustness() -> None:
    robust = pd.DataFrame(
        {
            "method": ["free", "free", "deebert", "deebert"],
            "regime": "semi",
            "metric": "vqa_accuracy",
            "split": ["test", "test_novel", "test", "test_novel"],
            "severity": [3, 0, 3, 0],
            "drop_vs_clean": [0.02, 0.03, 0.05, 0.06],
        }
    )
    # means only (no per-sample CIs): FREE's lower mean drop is no verdict, either way
    assert verdict_robustness(robust)[0] == "inconclusive (no per-sample data)"
    assert verdict_robustness(robust.assign(drop_vs_clean=robust["drop_vs_clean"][::-1].to_numpy()))[0] == (
        "inconclusive (no per-sample data)"
    )
    ci = pd.DataFrame(
        {
            "method": ["deebert", "distill", "free"],
            "regime": "semi",
            "task": "vqa",
            "metric": "vqa_accuracy",
            "vs_free": ["semi", "semi", ""],
            "n_samples": 64,
            "n_shifts": 40,
            "novel_n": 0,
            "drop": [0.16, 0.14, 0.12],
            "drop_lo": [0.10, 0.08, 0.06],
            "drop_hi": [0.22, 0.20, 0.18],
            "diff": [0.04, 0.02, np.nan],
            "diff_lo": [0.01, -0.02, np.nan],
            "diff_hi": [0.07, 0.06, np.nan],
        }
    )
    verdict, sentence = verdict_robustness(robust, ci=ci)
    assert verdict == "within noise" and "distill-semi - free-semi 2.0 pts [-2.0, 6.0]" in sentence
    assert verdict_robustness(None, ci=ci.assign(diff_lo=[0.01, 0.001, np.nan]))[0] == "holds"
    assert verdict_robustness(None, ci=ci.assign(diff_hi=[0.07, -0.01, np.nan]))[0] == "does not hold"
    holds = ci.assign(diff_lo=[0.01, 0.001, np.nan])
    unsup = pd.concat([holds.iloc[[2]], holds.iloc[:2].assign(vs_free="unsupervised", diff_lo=-0.01)])
    unsup["regime"] = ["unsupervised", "semi", "semi"]  # FREE's other regime, against the same baselines
    verdict, sentence = verdict_robustness(None, ci=pd.concat([holds, unsup]))
    assert verdict == "mixed" and "free-semi: holds; free-unsupervised: within noise" in sentence
    verdict, sentence = verdict_robustness(None, "no perturbed sweeps here")
    assert verdict == "not measured" and "no perturbed sweeps here" in sentence


def test_import_keeps_torch_out() -> None:
    code = "import sys, analyses.report; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_cider_table_keeps_the_last_exit_apart_from_the_final_layer(tmp_path: Path) -> None:
    """An exit placed at the last layer and the model's own head share a layer number."""
    root = make_results(tmp_path / "tiny")
    rows = [(layer, "exit", 1.0 + layer / 10) for layer in range(1, DEPTH + 1)] + [(DEPTH, "final", 2.5)]
    scores = pd.DataFrame(rows, columns=["layer", "exit_kind", "value"]).assign(
        metric="CIDEr", missing=None, split="test", method="free", regime="semi"
    )
    scores.to_parquet(root / "exits" / "free-semi" / "per_exit_caption_scores_test.parquet")
    build_report(root, n_boot=10)
    table = pd.read_csv(root / "tables" / "exits_cider_test.csv").set_index("method")
    assert table.loc["free", f"L{DEPTH}"] == pytest.approx(1.0 + DEPTH / 10)
    assert table.loc["free", "final"] == pytest.approx(2.5)


def test_backbone_captions_scored_elsewhere_fill_a_missing_entry(tmp_path: Path) -> None:
    """On the GPU host pycocoevalcap is absent: quality.json says so, and `score-captions --out` writes
    backbone/caption_scores.json on CPU; the report shows those scores, never the missing note."""
    root = make_results(tmp_path / "r", exits=False)
    quality = json.loads((root / "backbone" / "quality.json").read_text())
    _write_json(root / "backbone" / "quality.json", {**quality, "captions": {"missing": "no pycocoevalcap"}})
    assert load_results(root).quality["captions"] == {"missing": "no pycocoevalcap"}
    _write_json(root / "backbone" / "caption_scores.json", {"scores": {"CIDEr": 2.5, "BLEU-4": 0.8}})
    assert load_results(root).quality["captions"] == {"CIDEr": 2.5, "BLEU-4": 0.8}
