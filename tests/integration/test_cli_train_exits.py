"""`free-bench train-exits` on the smoke profile: trains, saves, loads back, refuses bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from clitools import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(smoke_env: dict) -> dict:
    return smoke_env


def _cli(*args: str, env) -> subprocess.CompletedProcess:
    return cli(*args, env=env)


@pytest.mark.parametrize(
    "method, regime", [("free", "semi"), ("distill", "unsupervised"), ("static", "semi")]
)
def test_train_save_and_load(env, tmp_path, method, regime):
    import free_bench

    out = tmp_path / f"{method}-{regime}"
    res = _cli(
        "train-exits",
        "--method",
        method,
        "--backbone",
        "embedded:smoke",
        "--regime",
        regime,
        "--exits",
        "2,4",
        "--steps",
        "6",
        "--device",
        "cpu",
        "--out",
        str(out),
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["layers"] == [2, 4]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["regime"] == regime
    assert len(manifest["loss_log"]) == (6 if method != "static" else 0)
    assert not out.with_name(out.name + ".state").exists()
    old = os.environ.get("FREE_BENCH_CACHE")
    os.environ["FREE_BENCH_CACHE"] = env["FREE_BENCH_CACHE"]
    try:  # free_bench.load_exits(dir) finds the backbone the exits name
        exits = free_bench.load_exits(out)
    finally:
        os.environ.pop("FREE_BENCH_CACHE") if old is None else os.environ.__setitem__("FREE_BENCH_CACHE", old)
    bb = exits.backbone
    assert exits.name == method and tuple(exits.layers) == (2, 4)
    hidden = torch.randn(1, 3, bb.lm_config.hidden_size)
    assert exits.exit_logits(2, hidden).shape[-1] == bb.lm_config.vocab_size


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "free", "--regime", "semi", "--exits", "0,2"], "outside 1..4"),
        (["--method", "free", "--regime", "semi", "--exits", "2,2"], "repeated"),
        (["--method", "pabee", "--regime", "semi", "--patience", "0"], "patience"),
        (["--method", "distill", "--regime", "semi", "--temperature", "0"], "temperature"),
        (["--method", "free", "--regime", "semi", "--split", "unlabeled"], "labelled split"),
        (["--method", "nope", "--regime", "semi"], "invalid choice: 'nope'"),
        (["--method", "free", "--regime", "weak"], "regime"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(env, tmp_path, args, message):
    out = tmp_path / "exits"
    res = _cli(
        "train-exits", "--backbone", "embedded:smoke", "--device", "cpu", "--out", str(out), *args, env=env
    )
    assert res.returncode != 0 and message in res.stderr, res.stderr[-1000:]
    assert list(tmp_path.iterdir()) == []


def test_exits_on_another_backbone_are_refused(env, tmp_path):
    """Exits remember their backbone: loading them onto a different one names both."""
    from free_bench.core.errors import FreeBenchError
    from free_bench.methods import load_exits
    from free_bench.models.embedded import build_model
    from free_bench.models.hf import backbone_from_model

    out = tmp_path / "deebert"
    res = _cli(
        "train-exits",
        "--method",
        "deebert",
        "--backbone",
        "embedded:smoke",
        "--regime",
        "semi",
        "--exits",
        "2,4",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    other = backbone_from_model(build_model("smoke", "opt", seed=5).eval(), spec="embedded:smoke-other")
    with pytest.raises(FreeBenchError, match="embedded:smoke-other"):
        load_exits(out, other)


def test_eval_exits_writes_the_per_exit_table(env, tmp_path):
    import pandas as pd

    exits, out = tmp_path / "pabee", tmp_path / "eval"
    train = ["train-exits", "--method", "pabee", "--backbone", "embedded:smoke", "--regime", "semi"]
    res = _cli(*train, "--steps", "2", "--device", "cpu", "--out", str(exits), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = _cli(
        "eval-exits", "--exits", str(exits), "--split", "val", "--max-rows", "12", "--out", str(out), env=env
    )
    assert res.returncode == 0, res.stderr[-2000:]
    caps = pd.read_parquet(out / "per_exit_captions_val.parquet")
    assert set(caps["layer"]) == {1, 2, 3, 4} and len(caps) > 0
    scores = pd.read_parquet(out / "per_exit_caption_scores_val.parquet")
    # a GPU run scores its captions later on a CPU box: score-captions gives the same table
    rescored = tmp_path / "rescored.parquet"
    res = _cli("score-captions", str(out / "per_exit_captions_val.parquet"), "--out", str(rescored), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    again = pd.read_parquet(rescored)
    pd.testing.assert_frame_equal(again[scores.columns], scores)
    df = pd.read_parquet(out / "per_exit_val.parquet")
    assert set(df["layer"]) == {1, 2, 3, 4} and len(df) == 12 * 5  # 4 exits (dense) + the final layer
    assert set(df["method"]) == {"pabee"} and df["accuracy"].between(0, 1).all()
    res = _cli("eval-exits", "--exits", str(tmp_path / "none"), "--out", str(out), env=env)
    assert res.returncode != 0 and "no trained exits" in res.stderr


def test_torchrun_two_processes_match_one(env, tmp_path):
    """DDP on 2 CPU processes (gloo), each with half of every global batch, follows the single-process
    run: the same losses step by step and the same weights, up to float rounding (Adam divides by
    sqrt(v) + 1e-8, so gradients rounded differently move tiny-gradient weights by ~1e-5 per step)."""
    from safetensors.torch import load_file

    args = ["--method", "free", "--backbone", "embedded:smoke", "--regime", "semi", "--exits", "2,4"]
    args += ["--steps", "2", "--device", "cpu", "--tasks", "vqa"]  # one-word answers: equal token shares
    one = _cli("train-exits", *args, "--out", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    two = subprocess.run(
        [*cmd, "-m", "free_bench", "train-exits", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("one", "two"))
    assert m2["config"]["processes"] == 2 and m1["config"]["processes"] == 1
    for a, b in zip(m1["loss_log"], m2["loss_log"], strict=True):
        for key in ("loss", "disc", "task", "adv"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    w1, w2 = (load_file(str(tmp_path / n / "exits.safetensors")) for n in ("one", "two"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-4, rtol=0)
