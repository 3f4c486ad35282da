"""`free-bench reproduce --profile smoke`: every stage that exists, its artefacts, and stage reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def _reproduce(tmp_path, *extra):
    env = {**os.environ, "FREE_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "free_bench",
        "reproduce",
        "--profile",
        "smoke",
        "--results",
        str(tmp_path / "r"),
    ]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env)


def test_reproduce_smoke_writes_every_artefact_and_reuses_stages(tmp_path):
    first = _reproduce(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "r" / "smoke"
    counts = pd.read_csv(out / "data_counts.csv", index_col=0)
    assert "total" in counts.index and counts.loc["total", "total"] > 300
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset_hash"] and manifest["data"]["rows"]["train"] > 0
    quality = json.loads((out / "backbone" / "quality.json").read_text())
    assert 0.0 <= quality["vqa_accuracy"] <= 1.0 and len(quality["logit_lens"]) == 4
    second = _reproduce(tmp_path)
    assert second.returncode == 0 and second.stdout.count("reused") == 2


def test_reproduce_unknown_profile(tmp_path):
    env = {**os.environ, "FREE_BENCH_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(
        [sys.executable, "-m", "free_bench", "reproduce", "--profile", "xl"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "valid profiles" in res.stderr
    assert not (tmp_path / "results").exists()
