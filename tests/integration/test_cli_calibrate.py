"""`free-bench calibrate` on the smoke profile: a Learn-then-Test certificate, its evaluation on test
under shifts, and bad input refused with nothing written."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from clitools import cli

from free_bench.calibration import hb_p_value

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_env):
    exits = tmp_path_factory.mktemp("exits") / "free"
    res = cli("train-exits", "--method", "free", "--backbone", "embedded:smoke", "--regime", "semi",
              "--exits", "1,2,3", "--steps", "4", "--device", "cpu", "--out", str(exits), env=smoke_env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return smoke_env, exits


def _calibrate(env, exits, out, *extra: str):
    return cli("calibrate", "--method", "free", "--exits", str(exits), "--split", "val", "--epsilon", "0.2",
               "--delta", "0.2", "--max-rows", "16", "--device", "cpu", "--out", str(out), *extra, env=env)  # fmt: skip


def test_a_certificate_and_where_it_breaks(trained, tmp_path):
    env, exits = trained
    out = tmp_path / "cal"
    res = _calibrate(env, exits, out, "--test-split", "test", "--perturb", "gaussian_noise:5", "typo:1")
    assert res.returncode == 0, res.stderr[-2000:]
    cert = json.loads((out / "calibration.json").read_text())
    assert cert["n"] == 16 and cert["risk"] == "consistency" and cert["epsilon"] == 0.2
    assert cert["thresholds"] == sorted(cert["thresholds"], reverse=True)  # max-prob: the highest bar first
    # the p-values are Hoeffding-Bentkus of the recorded risks; the threshold the last of the certified run
    assert cert["p_values"] == pytest.approx([hb_p_value(r, 16, 0.2) for r in cert["risks"]])
    certified = []
    for t, p in zip(cert["thresholds"], cert["p_values"], strict=True):
        if p > 0.2:
            break
        certified.append(t)
    assert cert["threshold"] == (certified[-1] if certified else None)
    table = pd.read_parquet(out / "calibration.parquet").set_index("threshold")
    assert table.loc[1.0, "risk"] == 0.0  # never exits: the full model's own answers
    samples = pd.read_parquet(out / "calibration_samples.parquet")
    assert len(samples) == 16 * len(cert["thresholds"]) and samples["loss"].isin([0.0, 1.0]).all()
    if cert["threshold"] is not None:
        ev = pd.read_parquet(out / "evaluation.parquet")
        assert list(ev["perturbation"]) == ["none", "gaussian_noise", "typo"]
        assert (ev["n"] == 16).all() and ev["risk"].between(0, 1).all()
        assert (ev["holds"] == (ev["risk"] <= 0.2)).all()


def test_the_accuracy_risk_is_a_drop_in_zero_one(trained, tmp_path):
    env, exits = trained
    res = _calibrate(env, exits, tmp_path / "acc", "--risk", "accuracy", "--thresholds", "0", "0.5", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    samples = pd.read_parquet(tmp_path / "acc" / "calibration_samples.parquet")
    drop = (samples["full_value"] - samples["value"]).clip(lower=0)
    assert samples["loss"].tolist() == pytest.approx(drop.tolist())
    assert json.loads((tmp_path / "acc" / "calibration.json").read_text())["thresholds"] == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--method", "deebert"), "--method deebert but"),
        (("--perturb", "typo:1"), "--perturb needs --test-split"),
        (("--epsilon", "1.5"), "must lie strictly between 0 and 1"),
        (("--perturb", "fog:2", "--test-split", "test"), "bad perturbation|unknown"),
    ],
)
def test_bad_input_writes_nothing(trained, tmp_path, extra, message):
    env, exits = trained
    out = tmp_path / "bad"
    args = ["calibrate", "--method", "free", "--exits", str(exits), "--split", "val", "--epsilon", "0.2",
            "--delta", "0.2", "--max-rows", "4", "--device", "cpu", "--out", str(out)]  # fmt: skip
    res = cli(*args, *extra, env=env)  # a repeated flag: argparse keeps the last
    assert res.returncode != 0
    assert re.search(message, res.stderr), res.stderr[-1000:]
    assert not out.exists()


def test_a_filled_folder_is_not_overwritten_unasked(trained, tmp_path):
    env, exits = trained
    out = tmp_path / "full"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = _calibrate(env, exits, out)
    assert res.returncode != 0 and "not empty" in res.stderr
    res = _calibrate(env, exits, out, "--overwrite")
    assert res.returncode != 0 and "not a calibration folder" in res.stderr
    assert (out / "notes.txt").read_text() == "mine"
