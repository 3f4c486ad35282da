"""REPORT.md's layout on a tiny results folder with two engines (the eager full model 5x slower), batched
sweeps that record `expected_batch_speedup` and `n_samples`, and a speculative caption sweep: the summary
comes first, the speedup verdict rests on the fastest full model, each section has at most one narrow table
and every linked table exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses.report import build_report

N = 12
KEYS = ["method", "regime", "kv_policy", "threshold", "batch_size", "task", "split", "perturbation"]


def _point(method: str, threshold: float, value: float, own_ms: float, full_ms: float, task: str = "vqa",
           batch: int = 1, **kw: object) -> dict:  # fmt: skip
    return {"method": method, "regime": "none" if method == "full" else "semi", "kv_policy": "propagate",
            "threshold": threshold, "batch_size": batch, "task": task, "split": "test", "perturbation": "none",
            "metric": "vqa_accuracy" if task == "vqa" else "CIDEr", "value": value, "expected_speedup": 2.0,
            "measured_speedup": full_ms / own_ms, "latency_ms_median": own_ms, "latency_ms_p90": own_ms,
            "mean_exit_layer": 2.0, "exit_layer_hist": "{}", "timer": "cuda_event", "device": "gpu-test",
            "n_samples": N, "_own": own_ms, "_full": full_ms} | kw  # fmt: skip


def _write(root: Path, name: str, rows: list[dict], spec: dict) -> None:
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    sweep = pd.DataFrame(rows)
    sweep.drop(columns=["_own", "_full"]).to_parquet(folder / "sweep.parquet")
    rng = np.random.default_rng(len(name))
    parts = []
    for _, r in sweep.iterrows():
        jitter = rng.uniform(0.9, 1.1, N)
        parts.append(pd.DataFrame({**{k: r[k] for k in KEYS}, "sample_id": [f"q{i}" for i in range(N)],
                                   "value": (np.arange(N) < round(N * min(r["value"], 1.0))) * 1.0,
                                   "exit_layer_mean": 2.0, "cost_layers": 2.0, "full_cost_layers": 4.0,
                                   "latency_ms": r["_own"] * jitter, "full_latency_ms": r["_full"] * jitter,
                                   "batch": np.arange(N), "prefix_ms": 0.2 * r["_full"] * jitter}))  # fmt: skip
    pd.concat(parts, ignore_index=True).to_parquet(folder / "samples.parquet")
    (folder / "manifest.json").write_text(json.dumps({"spec": spec}))


def _results(root: Path) -> Path:
    for engine, full in (("eager", 20.0), ("graphs", 4.0)):  # FREE halves each engine's own full model
        rows = [_point("full", 4.0, 0.8, full, full), _point("free", 0.7, 0.8, full / 2, full)]
        _write(root, f"live-{engine}", rows, {"engine": engine, "compact": True})
    for compact in (True, False):
        rows = [_point("full", 4.0, 0.8, 1.0, 1.0, batch=8), _point("free", 0.7, 0.8, 0.8, 1.0, batch=8,
                                                                      expected_batch_speedup=1.5)]  # fmt: skip
        _write(root, f"live-b8-{compact}", rows, {"engine": "eager", "compact": compact})
    rows = [_point("full", 4.0, 2.0, 4.0, 4.0, task="caption"),
            _point("free", 0.8, 2.0, 2.0, 4.0, task="caption", acceptance_rate=0.8, tokens_per_pass=3.0)]
    _write(root, "live-spec-caption", rows, {"engine": "graphs", "decode": "speculative", "compact": True})
    _write(root, "live-lossy-caption", [_point("full", 4.0, 2.0, 4.0, 4.0, task="caption"),
                                        _point("free", 0.8, 1.8, 1.6, 4.0, task="caption")],
           {"engine": "graphs", "compact": True})  # fmt: skip
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_report(_results(tmp_path_factory.mktemp("layout")), n_boot=50, seed=0)


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^#{2,3} ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1] for p in parts}


def test_the_summary_comes_first_and_rests_on_the_fastest_full_model(report: Path) -> None:
    text = report.read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")][0] == "## Summary"
    summary = _sections(text)["Summary"]
    claim = next(line for line in summary.splitlines() if "About 1.5x" in line)
    # FREE is 2x over each engine's own full model; against the graphs full model eager FREE is 0.4x
    assert "verdict **holds**" in claim and "fastest full model (graphs)" in claim and "graphs engine" in claim
    assert '"FREE >= 1.5x lossless on captions (batch 1)": **holds**' in summary  # 2x, all questions
    best = pd.read_csv(report.parent / "tables" / "summary_best_points.csv").set_index(["method", "task"])
    assert best.loc[("free", "vqa"), "engine"] == "graphs" and best.loc[("free", "vqa"), "n_samples"] == N
    eager = pd.read_csv(report.parent / "tables" / "speedup_best_measured.csv")
    eager = eager[(eager["engine"] == "eager") & (eager["batch_size"] == 1) & (eager["method"] == "free")]
    assert eager.set_index("baseline")["measured_speedup"].round(1).to_dict() == {
        "own engine (eager)": 2.0, "fastest full model (graphs)": 0.4}


def test_each_section_has_its_figure_first_and_at_most_one_narrow_table(report: Path) -> None:
    sections = _sections(report.read_text())
    for title in ("Batches", "Speculative decoding", "Engine targets", "Accuracy vs speedup"):
        assert sections[title].lstrip().startswith("!["), title
    for title, body in sections.items():
        lines = body.splitlines()
        tables = [h for h, nxt in zip(lines, lines[1:], strict=False) if nxt.startswith("|---")]  # header rows
        assert len(tables) <= 1, title
        assert all(t.count(" | ") + 1 <= 8 for t in tables) or title == "Summary", title
    batches = pd.read_csv(report.parent / "tables" / "batches.csv").set_index("compact")
    assert batches["expected_batch_speedup"].tolist() == [1.5, 1.5] and batches["meets_target"].notna().all()


def test_every_linked_table_and_figure_exists(report: Path) -> None:
    text = report.read_text()
    linked = re.findall(r"\]\(((?:tables|figures)/[^)]+)\)", text)
    assert len(linked) > 10 and all((report.parent / p).is_file() for p in linked)
    for name in ("batches", "speculative", "engine_targets", "speedup_vs_fastest_vqa"):
        assert f"figures/{name}.png" in text, name


def test_a_figure_drawn_twice_is_the_same_file(tmp_path) -> None:
    """No creation date or version stamps: rebuilding a report changes a figure only where its picture does."""
    import time

    from analyses.figures import save_figure

    first = [p.read_bytes() for p in save_figure(tmp_path / "a", "x", lambda ax: ax.plot([1, 2], [3, 4]))]
    time.sleep(1.1)  # a stamped date would differ by now
    second = [p.read_bytes() for p in save_figure(tmp_path / "b", "x", lambda ax: ax.plot([1, 2], [3, 4]))]
    assert first == second
