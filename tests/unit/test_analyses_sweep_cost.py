"""Simulated sweeps against their teacher-forced pass (`analyses.sweep_cost`), alone and in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analyses_report import make_results  # same folder: the tiny results folder of the report tests

from analyses.report import build_report
from analyses.sweep_cost import TARGET, compute_sweep_cost, summary, timing_rows

SIM = {"teacher_forced_s": 2.0, "record_s": 2.5, "sweep_s": 2.75, "thresholds": 101}


def test_ratios_target_and_what_is_not_a_simulated_timing() -> None:
    live = {"0.5": {"engine_ms": 3.0, "hf_ms": 4.0}}  # a live sweep's timings: not a simulated task
    rows = timing_rows("sim-a", {"vqa": SIM, **live}) + timing_rows("sim-b", {"vqa": {**SIM, "sweep_s": 3.5}})
    rows += timing_rows("sim-c", {"caption": {**SIM, "record_s": 0.0}}) + timing_rows("live", live)
    rows += timing_rows("old", None)  # a manifest written before sweeps recorded their seconds
    cost = compute_sweep_cost(pd.DataFrame(rows))
    assert list(cost["sweep"]) == ["sim-c", "sim-a", "sim-b"]  # by task, then sweep
    a, b = cost.set_index("sweep").loc["sim-a"], cost.set_index("sweep").loc["sim-b"]
    assert a["sweep_over_record"] == pytest.approx(1.1) and a["sweep_over_teacher_forced"] == pytest.approx(
        1.375
    )
    assert (
        bool(a["within_target"]) and b["sweep_over_record"] == pytest.approx(1.4) and not b["within_target"]
    )
    c = cost.set_index("sweep").loc["sim-c"]
    assert np.isnan(c["sweep_over_record"]) and not c["within_target"]  # no pass timed: no ratio, not met
    text = summary(cost)
    assert f"vqa: 1 of 2 sweeps within {TARGET}x" in text and "1.10-1.40x" in text and "caption" not in text
    with pytest.raises(ValueError, match="record_s"):
        compute_sweep_cost(pd.DataFrame([{"sweep": "x", "task": "vqa", "sweep_s": 1.0}]))


def test_the_report_shows_each_simulated_sweeps_cost(tmp_path: Path) -> None:
    root = make_results(tmp_path / "tiny")
    for name, sweep_s in (("sim-free", 2.75), ("sim-deebert", 3.5)):
        path = root / "sweeps" / name / "manifest.json"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps(meta | {"timings": {"vqa": {**SIM, "sweep_s": sweep_s}}}))
    report = build_report(root, n_boot=20, seed=0)
    table = pd.read_csv(root / "tables" / "simulated_sweep_cost.csv")
    assert sorted(table["sweep"]) == ["sim-deebert", "sim-free"]
    assert table["within_target"].tolist() == [False, True]
    text = report.read_text()
    assert "Simulated sweep cost" in text and "vqa: 1 of 2 sweeps within 1.2x their recording pass" in text


def test_the_report_says_when_no_sweep_recorded_its_seconds(tmp_path: Path) -> None:
    report = build_report(make_results(tmp_path / "tiny"), n_boot=20, seed=0)
    section = report.read_text().split("## Simulated sweep cost\n", 1)[1]
    assert section.lstrip().startswith("**missing**: no simulated sweep recorded its seconds")
