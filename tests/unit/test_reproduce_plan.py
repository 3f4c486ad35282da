"""The gpu profile's exit chains as planned (nothing run): the order workers take them in, and what
each chain evaluates (per-exit VQA on val and test; captions, the first seed's, on test only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from free_bench.config import get_profile
from free_bench.pipeline.context import Context
from free_bench.pipeline.stages import chain_plan, live_grid, robustness_stage, run_names


def test_gpu_chains_heaviest_first_and_captions_on_test_only(tmp_path: Path) -> None:
    ctx = Context(profile="gpu", seed=0, results=tmp_path / "results", cache=tmp_path / "cache",
                  settings=get_profile("gpu"), backbone="embedded:gpu")
    plans = [chain_plan(ctx, *r) for r in run_names(ctx)]
    order = [p["name"] for p in sorted(plans, key=lambda p: -p["weight"])]  # as run_chains queues them
    assert order[:2] == ["free-semi-s0", "free-unsupervised-s0"]  # FREE's first seed: the longest chains
    assert order.index("distill-semi-s0") < order.index("free-semi-s1")  # its first seed outweighs FREE's
    assert set(order[-4:]) == {"deebert-semi-s1", "deebert-semi-s2", "pabee-semi-s1", "pabee-semi-s2"}
    for p in plans:
        evals = [[*job["splits"], *job["tasks"]] for job in p["eval"]]
        outputs = {Path(f).name for f in p["eval_outputs"]}
        assert evals[0] == ["val", "test", "vqa"]
        assert {"per_exit_val.parquet", "per_exit_test.parquet"} <= outputs
        assert not any("captions_val" in f or "caption_scores_val" in f for f in outputs)
        if p["name"].endswith("-s0"):
            assert evals[1:] == [["test", "caption"]] and "per_exit_captions_test.parquet" in outputs
        else:
            assert len(evals) == 1 and not any("caption" in f for f in outputs)


def test_live_grid_keeps_the_stricter_neighbour() -> None:
    """Two live points: the operating point and, of its two equally near neighbours, the one with the
    lower expected speedup, whichever side of t that is (max_prob rises with strictness, entropy falls)."""
    probs = pd.Series({t / 100: 3.0 - t / 50 for t in range(101)})  # max_prob: higher is stricter
    assert live_grid(probs, 0.51, 2) == [0.51, 0.53]
    assert live_grid(probs, 0.51, 3) == [0.49, 0.51, 0.53]
    entropy = pd.Series({t / 100: 1.0 + t / 50 for t in range(101)})  # entropy: lower is stricter
    assert live_grid(entropy, 0.51, 2) == [0.49, 0.51]
    layers = pd.Series({4.0: 6.0, 8.0: 3.0, 12.0: 2.0, 16.0: 1.5, 20.0: 1.2})  # static: every grid point
    assert live_grid(layers, 16.0, 2) == [16.0, 20.0]
    assert live_grid(layers, 20.0, 3) == [12.0, 16.0, 20.0]  # at the edge: the two below


def test_a_config_file_changes_the_plan(tmp_path: Path, monkeypatch) -> None:
    """A user's checkpoint and data: the settings file's exit steps, runs and tasks reach every chain."""
    import json

    from free_bench.pipeline.reproduce import context

    monkeypatch.setenv("FREE_BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ckpt").mkdir()
    cfg = tmp_path / "run.yaml"
    cfg.write_text("profile: cpu\nname: mine\nexits: {steps: 7, batch_size: 4}\n"
                   "reproduce: {runs: ['free:semi', 'deebert:semi'], tasks: [vqa]}\n")
    ctx = context("cpu", 0, tmp_path / "results", backbone=str(tmp_path / "ckpt"), data=tmp_path / "d", config=cfg)
    assert ctx.results == tmp_path / "results" / "mine" and ctx.scenes == "cpu" and not ctx.embedded
    ctx.cache.mkdir(parents=True)
    (ctx.cache / "backbone.done.json").write_text(json.dumps({"num_layers": 8}))  # what the backbone stage records
    plans = [chain_plan(ctx, *r) for r in run_names(ctx)]
    assert [p["name"] for p in plans] == ["free-semi", "deebert-semi"]
    for p in plans:
        assert p["train"]["steps"] == 7 and p["train"]["train_config"]["batch_size"] == 4
        assert p["train"]["data"] == str((tmp_path / "d").resolve()) and p["train"]["tasks"] == ["vqa"]
        assert not any("caption" in job["tasks"] for job in p["eval"])
        assert not any(s["spec"].get("tasks") == ["caption"] for s in p["sweeps"])


def test_bad_config_files_are_named(tmp_path: Path) -> None:
    import pytest

    from free_bench.core.errors import FreeBenchError
    from free_bench.pipeline.settings import load_settings

    for text, match in (("exits: {stpes: 3}", "stpes"), ("reproduce: {live_rows: many}", "live_rows"),
                        ("sweeps: {}", "sweeps"), ("profile: huge", "huge")):  # fmt: skip
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(FreeBenchError, match=match):
            load_settings(path)
    (tmp_path / "ok.toml").write_text('profile = "smoke"\n[exits]\nsteps = 3\n')
    assert load_settings(tmp_path / "ok.toml").exits.steps == 3


def test_no_robustness_runs_means_no_grid_and_nothing_written(tmp_path: Path) -> None:
    """`robustness_runs: []` in a config skips the grid (it crashed concatenating nothing), and writes
    no robustness folder the report would read as a measured grid."""
    base = get_profile("smoke")
    settings = dataclasses.replace(base, reproduce=dataclasses.replace(base.reproduce, robustness_runs=()))
    ctx = Context(profile="smoke", seed=0, results=tmp_path / "results", cache=tmp_path / "cache",
                  settings=settings, backbone="embedded:smoke")
    ctx.cache.mkdir(parents=True)
    (ctx.cache / "sweeps.done.json").write_text(json.dumps({"operating_points": {}}))
    assert robustness_stage(ctx) == {"methods": [], "inputs": 0}
    assert not (ctx.results / "sweeps" / "robustness").exists()
