"""`free-bench attack` on the smoke profile's exits: the tables it writes, and bad input refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from clitools import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_env):
    exits = tmp_path_factory.mktemp("attack-exits") / "free"
    res = cli("train-exits", "--method", "free", "--backbone", "embedded:smoke", "--regime", "semi", "--tasks", "vqa",
              "--exits", "1,2,3", "--steps", "4", "--device", "cpu", "--out", str(exits), env=smoke_env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return smoke_env, exits


def _attack(env, exits: Path, out: Path, *extra: str):
    return cli("attack", "--exits", str(exits), "--split", "test", "--max-rows", "8", "--steps", "2",
               "--batch-size", "4", "--device", "cpu", "--out", str(out), *extra, env=env)  # fmt: skip


def test_attack_writes_clean_and_attacked_tables(trained, tmp_path):
    env, exits = trained
    out = tmp_path / "attack"
    res = _attack(env, exits, out, "--method", "free", "--eps", "8/255", "--seed", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "speedup_taken" in res.stdout and f"wrote {out / 'attack.parquet'}" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["attack.parquet", "attack_samples.parquet", "manifest.json"]
    assert not Path(f"{out}.lock").exists()
    table = pd.read_parquet(out / "attack.parquet")
    columns = {"method", "regime", "condition", "threshold", "eps", "steps", "step_size", "seed", "n_samples",
               "timer", "accuracy", "full_accuracy", "mean_exit_layer", "expected_speedup", "measured_speedup",
               "speedup_taken"}  # fmt: skip
    assert columns <= set(table.columns) and list(table["condition"]) == ["clean", "attacked"]
    row = table.iloc[1]
    assert (row.method, row.regime, row.threshold, row.steps, row.seed, row.n_samples) == ("free", "semi", 0.5, 2, 1, 8)
    assert row.eps == pytest.approx(8 / 255) and row.step_size == pytest.approx(2.5 * (8 / 255) / 2)
    assert set(table["timer"]) == {"cpu_wall"} and (table["measured_speedup"] > 0).all()
    assert table["accuracy"].between(0, 1).all() and table["mean_exit_layer"].between(1, 4).all()
    samples = pd.read_parquet(out / "attack_samples.parquet")
    want = {"sample_id", "condition", "exit_layer_mean", "cost_layers", "full_cost_layers", "latency_ms",
            "full_latency_ms", "value", "linf"}  # fmt: skip
    assert want <= set(samples.columns) and len(samples) == 16 and samples["sample_id"].nunique() == 8
    attacked = samples[samples.condition == "attacked"]
    assert (attacked["linf"] <= 8 / 255 + 1e-6).all() and (attacked["linf"] > 0).all()
    assert (samples.loc[samples.condition == "clean", "linf"] == 0).all()
    by = samples.groupby("condition", sort=False)
    assert (by["full_cost_layers"].sum() / by["cost_layers"].sum()).to_numpy() == pytest.approx(
        table["expected_speedup"].to_numpy()
    )
    clean, hit = table["expected_speedup"]
    taken = table["speedup_taken"].iloc[1]
    assert math.isnan(taken) if clean <= 1 else taken == pytest.approx((clean - hit) / (clean - 1))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "attack" and manifest["config"]["method"] == "free"
    assert manifest["config"]["exits"] == str(exits.resolve()) and manifest["config"]["data"] == {"profile": "smoke", "seed": 0}


def test_a_method_mismatch_is_named_and_writes_nothing(trained, tmp_path):
    env, exits = trained
    out = tmp_path / "attack"
    res = _attack(env, exits, out, "--method", "deebert")
    assert res.returncode == 2 and f"--method deebert but {exits} holds free exits" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not out.exists() and not Path(f"{out}.lock").exists()
