"""Two decode engines (eager, CUDA graphs) in the analyses: each engine's points are their own curves,
table rows and figures, and tables written before the `engine` column load as eager (live) or none
(simulated)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.claims import verdict_speedup  # noqa: E402
from analyses.load import load_results  # noqa: E402
from analyses.projection import compute_projection, costs_from_bench  # noqa: E402
from analyses.report import build_report  # noqa: E402
from analyses.robustness import calibrate, compute_robustness, compute_robustness_ci  # noqa: E402
from analyses.speedup import best_at_drop, compute_auc, compute_curves, plot_speedup  # noqa: E402

KEYS = ["method", "regime", "kv_policy", "threshold", "batch_size", "task", "split", "perturbation"]
SPEED = {"eager": 1.1, "graphs": 1.6}  # FREE's measured speedup at its best threshold, per engine


def _rows(timer: str, engine: str | None = None, split: str = "test") -> list[dict]:
    """The full model and FREE at thresholds 0.5 / 0.7 / 0.9 (0.5 is 2 points down). Measured speedups
    are the engine's: `SPEED` at 0.7, x1.2 at 0.5, x0.8 at 0.9 (no `engine`: eager's); NaN simulated."""
    timed = timer != "none"
    points = [("full", "none", 4.0, 0.80, 1.0, 1.0)]
    for t, v, e in ((0.5, 0.78, 2.4), (0.7, 0.795, 2.0), (0.9, 0.80, 1.5)):
        m = SPEED[engine or "eager"] * (1.2 if t == 0.5 else 1.0 if t == 0.7 else 0.8)
        points.append(("free", "semi", t, v, e, m))
    return [
        {"method": meth, "regime": reg, "kv_policy": "propagate", "threshold": t, "batch_size": 1,
         "task": "vqa", "split": split, "perturbation": "none", "metric": "vqa_accuracy", "value": v,
         "expected_speedup": e, "measured_speedup": m if timed else np.nan, "latency_ms_median": 1.0,
         "latency_ms_p90": 1.0, "mean_exit_layer": 4.0 / e, "exit_layer_hist": json.dumps({"4": 2}),
         "timer": timer, "device": "gpu-test"} | ({"engine": engine} if engine else {})
        for meth, reg, t, v, e, m in points
    ]  # fmt: skip


def _samples(sweep: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """n questions per point, right in proportion to the point's value, timed to match its speedup (with
    the point's engine where the sweep names one)."""
    parts = []
    for _, r in sweep.iterrows():
        timed = r["timer"] != "none"
        parts.append(
            pd.DataFrame(
                {k: r[k] for k in KEYS + ["engine"] if k in r}
                | {
                    "sample_id": [f"q{i}" for i in range(n)],
                    "value": (np.arange(n) < round(n * r["value"])) * 1.0,
                    "exit_layer_mean": 2.0,
                    "cost_layers": 4.0 / r["expected_speedup"],
                    "full_cost_layers": 4.0,
                    "latency_ms": 10.0 / r["measured_speedup"] if timed else np.nan,
                    "full_latency_ms": 10.0 if timed else np.nan,
                    "batch": np.arange(n),
                }  # fmt: skip
            )
        )
    return pd.concat(parts, ignore_index=True)


def _write(root: Path, name: str, rows: list[dict], spec: dict | None = None, samples: bool = True) -> None:
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    sweep = pd.DataFrame(rows)
    sweep.to_parquet(folder / "sweep.parquet")
    if samples:
        _samples(sweep).to_parquet(folder / "samples.parquet")
    (folder / "manifest.json").write_text(json.dumps({"spec": {"compact": True} | (spec or {})}))


def _curves(engines: tuple[str, ...] = ("eager", "graphs")) -> pd.DataFrame:
    sweep = pd.DataFrame([r for g in engines for r in _rows("cuda_event", g)])
    return compute_curves(sweep, _samples(sweep), n_boot=50)


def test_rows_without_engine_load_as_eager_when_live_and_none_when_simulated(tmp_path: Path) -> None:
    _write(tmp_path, "live-old", _rows("cuda_event"))  # written before the column and the spec key
    _write(tmp_path, "sim-old", _rows("none"))
    _write(tmp_path, "live-new", _rows("cpu_wall"), spec={"engine": "graphs"})  # the spec names it
    res = load_results(tmp_path)
    got = res.sweep.groupby("sweep")["engine"].unique().map(list).to_dict()
    assert got == {"live-old": ["eager"], "sim-old": ["none"], "live-new": ["graphs"]}
    samples = res.samples.groupby("sweep")["engine"].unique().map(list).to_dict()
    assert samples == got  # the samples take the engine of their sweep's point
    assert res.samples["timer"].notna().all()


def test_a_speculative_sweep_is_a_curve_of_its_own(tmp_path: Path) -> None:
    """Speculative points are lossless: never pooled with the same engine's early exits."""
    _write(tmp_path, "live-greedy", _rows("cuda_event"), spec={"engine": "eager"})
    _write(tmp_path, "live-spec", _rows("cuda_event"), spec={"engine": "eager", "decode": "speculative"})
    res = load_results(tmp_path)
    got = res.sweep.groupby("sweep")["engine"].unique().map(list).to_dict()
    assert got == {"live-greedy": ["eager"], "live-spec": ["eager-speculative"]}
    assert res.samples.groupby("sweep")["engine"].unique().map(list).to_dict() == got
    curves = compute_curves(res.sweep, res.samples, n_boot=20)
    assert set(curves.loc[curves["timer"] != "none", "engine"]) == {"eager", "eager-speculative"}


def test_engine_column_of_the_table_wins_over_the_spec(tmp_path: Path) -> None:
    rows = _rows("cuda_event", "graphs") + _rows("none")
    _write(tmp_path, "mixed", [r | {"engine": r.get("engine", "")} for r in rows], spec={"engine": "eager"})
    sweep = load_results(tmp_path).sweep
    assert set(sweep.loc[sweep["timer"] != "none", "engine"]) == {"graphs"}
    assert set(sweep.loc[sweep["timer"] == "none", "engine"]) == {"none"}  # "" on a simulated row: none


def test_samples_of_a_sweep_with_two_engines_at_one_point_are_not_guessed(tmp_path: Path) -> None:
    _write(tmp_path, "both", _rows("cuda_event", "eager") + _rows("cuda_event", "graphs"), samples=False)
    only = pd.DataFrame(_rows("cuda_event"))  # samples that do not say which engine
    _samples(only).to_parquet(tmp_path / "sweeps" / "both" / "samples.parquet")
    res = load_results(tmp_path)
    assert res.samples is None and any("several engines" in n for n in res.notes)


def test_two_engines_at_the_same_thresholds_are_two_curves_with_their_own_speedups() -> None:
    curves = _curves()
    free = curves[curves["method"] == "free"].set_index(["engine", "threshold"])
    assert len(free) == 6  # 3 thresholds x 2 engines, none averaged away
    assert free.loc[("graphs", 0.7), "measured_speedup"] == pytest.approx(1.6)
    assert free.loc[("eager", 0.7), "measured_speedup"] == pytest.approx(1.1)
    lo, hi = free.loc[("graphs", 0.7), ["measured_speedup_lo", "measured_speedup_hi"]]
    assert lo == pytest.approx(1.6) and hi == pytest.approx(1.6)  # its own samples, not eager's
    best = best_at_drop(curves).set_index("engine")
    assert sorted(best.index) == ["eager", "graphs"]
    assert best.loc["graphs", "measured_speedup"] == pytest.approx(1.6)
    assert best.loc["eager", "measured_speedup"] == pytest.approx(1.1)
    assert (best["threshold"] == 0.7).all() and best["meets_drop"].all()
    auc = compute_auc(curves).set_index("engine")
    assert auc.loc["graphs", "x_hi"] == pytest.approx(1.6 * 1.2)  # each engine's own speedup range
    assert auc.loc["eager", "x_hi"] == pytest.approx(1.1 * 1.2)


def test_one_figure_draws_two_engines_as_two_labelled_lines() -> None:
    fig, ax = plt.subplots()
    plot_speedup(_curves(), ax)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["free eager", "free graphs"] and "full model" in labels
    plt.close(fig)


def _best(engine: str, measured: float, lo: float) -> dict:
    return {"method": "free", "regime": "semi", "task": "vqa", "batch_size": 1, "timer": "cuda_event",
            "engine": engine, "split": "test", "perturbation": "none", "value": 0.80, "full_value": 0.805,
            "drop": 0.005, "meets_drop": True, "measured_speedup": measured, "measured_speedup_lo": lo,
            "measured_speedup_hi": lo + 0.1, "expected_speedup": 2.0}  # fmt: skip


def test_speedup_verdict_rests_on_one_engine_and_shows_the_other() -> None:
    both = pd.DataFrame([_best("eager", 1.1, 1.05), _best("graphs", 1.6, 1.55)])
    verdict, sentence = verdict_speedup(both)
    assert verdict == "holds"
    assert "rests on the graphs engine" in sentence and "1.60x [1.55, 1.65]" in sentence
    assert "the eager engine (holds on expected speedup only): " in sentence and "1.10x" in sentence
    assert verdict_speedup(both[both["engine"] == "eager"])[0] == "holds on expected speedup only"
    flipped = pd.DataFrame([_best("eager", 1.6, 1.55), _best("graphs", 1.1, 1.05)])
    assert "rests on the eager engine" in verdict_speedup(flipped)[1]


def test_report_shows_both_engines(tmp_path: Path) -> None:
    _write(tmp_path, "sim", _rows("none"))
    _write(tmp_path, "live-eager", _rows("cuda_event"))  # an older sweep: no column, no spec key
    _write(tmp_path, "live-graphs", _rows("cuda_event", "graphs"), spec={"engine": "graphs"})
    report = build_report(tmp_path, n_boot=20)
    figs = {p.stem for p in (tmp_path / "figures").glob("speedup_measured*.png")}
    assert figs == {"speedup_measured_vqa_eager", "speedup_measured_vqa_graphs"}
    best = pd.read_csv(tmp_path / "tables" / "speedup_best_measured.csv")
    own = best[best["baseline"].str.startswith("own engine")].set_index("engine")
    assert own.loc["graphs", "measured_speedup"] == pytest.approx(1.6)
    assert own.loc["eager", "measured_speedup"] == pytest.approx(1.1)
    assert own.loc["graphs", "baseline"] == "own engine (graphs)"
    auc = pd.read_csv(tmp_path / "tables" / "speedup_auc_measured.csv")
    assert sorted(auc["engine"]) == ["eager", "graphs"]
    expected = pd.read_csv(tmp_path / "tables" / "speedup_best_expected.csv")
    assert set(expected["engine"]) == {"none"}  # the simulated curve is one, engine-independent
    text = report.read_text()
    assert "| method | engine | threshold |" in text and "figures/speedup_vs_fastest_vqa.png" in text
    claim = next(line for line in text.split("## The paper's claims")[1].splitlines() if "About 1.5x" in line)
    assert "verdict **holds**" in claim and "rests on the graphs engine" in claim and "eager engine" in claim


def test_robustness_keeps_engines_apart_and_refuses_them_pooled() -> None:
    sweep = pd.DataFrame(
        _rows("cuda_event", "eager", split="val") + _rows("cuda_event", "graphs", split="val")
        + _rows("cuda_event", "eager") + _rows("cuda_event", "graphs")
    )  # fmt: skip
    operating = calibrate(sweep, x="measured_speedup").set_index("engine")
    assert operating.loc["graphs", "measured_speedup"] == pytest.approx(1.6)
    assert operating.loc["eager", "measured_speedup"] == pytest.approx(1.1)
    robust = compute_robustness(sweep, operating.reset_index())
    assert sorted(robust["engine"]) == ["eager", "graphs"]
    with pytest.raises(ValueError, match="several engines"):
        engines = sweep["engine"].repeat(10).to_numpy()  # _samples writes 10 rows per sweep row, in order
        compute_robustness_ci(_samples(sweep).assign(engine=engines), operating.reset_index())


def test_projection_prices_each_engines_points_with_that_engines_costs() -> None:
    bench = {"policy": "propagate", "model": "big", "num_layers": 32, "exit_layer": 16, "ms_per_token_full": 10.0,
             "ms_per_token_static_exit": 6.0, "ms_per_exit_check": 1.0, "machine": {"timer": "cuda_event"}}  # fmt: skip
    graphs = {**bench, "new_tokens": 32, "ms_per_decode_full": 64.0, "measured_speedup": 1.6,
              "ms_per_exit_check": 0.1, "ms_per_token_full": 1.5}  # fmt: skip
    costs = costs_from_bench(
        {"benchmarks": [{"name": "test_static_exit_x", "extra_info": bench},
                        {"name": "test_graphs_engine_near_the_floor", "extra_info": graphs}]}
    )  # fmt: skip
    by_engine = costs.set_index("engine")
    # graphs: 2 ms per token whole-decode, 1.25 at the static exit: 0.75 saved over 16 layers
    assert by_engine.loc["graphs", "ms_per_skipped_layer"] == pytest.approx(0.75 / 16)
    assert by_engine.loc["eager", "ms_per_skipped_layer"] == pytest.approx(4.0 / 16)
    points = pd.DataFrame(_rows("cuda_event", "eager")[1:2] + _rows("cuda_event", "graphs")[1:2])
    got = compute_projection(points.assign(exits_at="2", depth=4), costs).set_index("engine")
    assert len(got) == 2  # one row per point: each engine's costs only
    assert got.loc["graphs", "measured_speedup"] == pytest.approx(1.6 * 1.2)
    assert got.loc["eager", "measured_speedup"] == pytest.approx(1.1 * 1.2)
    # FREE's check adds its generator layer, priced as one layer of the same engine
    assert got.loc["graphs", "ms_per_check"] == pytest.approx(0.1 + 0.75 / 16)
    assert got.loc["eager", "ms_per_check"] == pytest.approx(1.0 + 4.0 / 16)


def test_report_robustness_uses_one_engine_and_says_so(tmp_path: Path) -> None:
    for engine in ("eager", "graphs"):
        rows = _rows("cuda_event", engine)
        rows += [r | {"perturbation": "noise:1", "value": r["value"] - 0.1} for r in rows]
        _write(tmp_path, f"rob-{engine}", [r for r in rows if r["threshold"] in (0.7, 4.0)])
    report = build_report(tmp_path, n_boot=20)
    robust = pd.read_csv(tmp_path / "tables" / "robustness.csv")
    assert len(robust[robust["method"] == "free"]) == 2  # clean and noisy test, once: not once per engine
    assert robust["measured_speedup"].dropna().eq(1.1).all()  # eager's rows
    assert "live rows of the eager engine used; those of graphs left out" in report.read_text()
