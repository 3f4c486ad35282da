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


STAGES = ["data", "backbone", "exits", "sweeps", "robustness", "guarantees", "report"]
# measured speedups per engine: the lossy eager decodes, and the speculative ones (lossless, a curve apart)
FIGURES = ["speedup_measured_vqa_eager", "speedup_measured_vqa_eager-speculative", "speedup_measured_caption_eager",
           "speedup_measured_caption_eager-speculative", "speedup_expected_vqa", "speedup_expected_caption",
           "overthinking_by_layer", "midcrisis_layers", "robustness_heatmap"]  # fmt: skip


def test_reproduce_smoke_writes_every_artefact_and_reuses_stages(tmp_path):
    from free_bench.core.records import SWEEP, SWEEP_SAMPLES

    first = _reproduce(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "r" / "smoke"
    counts = pd.read_csv(out / "data_counts.csv", index_col=0)
    assert "total" in counts.index and counts.loc["total", "total"] > 300
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset_hash"] and manifest["data"]["rows"]["train"] > 0
    assert set(manifest["stage_seconds"]) == set(STAGES)
    quality = json.loads((out / "backbone" / "quality.json").read_text())
    assert 0.0 <= quality["vqa_accuracy"] <= 1.0 and len(quality["logit_lens"]) == 4
    # exits: every run of the profile, per-exit tables on val and test
    runs = sorted(p.name for p in (out / "exits").iterdir())
    assert runs == ["deebert-semi", "distill-semi", "free-semi", "free-unsupervised", "pabee-semi"]
    for run in runs:
        for split in ("val", "test"):
            df = pd.read_parquet(out / "exits" / run / f"per_exit_{split}.parquet")
            assert {"question_id", "layer", "exit_kind", "accuracy"} <= set(df.columns) and len(df)
    # sweeps: every table matches its schema, simulated and live, and the robustness grid
    sweeps = sorted(p.name for p in (out / "sweeps").iterdir())
    batched = {f"live-{r}-b4-{c}" for r in runs + ["static"] for c in ("compact", "no-compact")}
    speculative = {"live-free-semi-b1-speculative", "live-free-semi-b1-speculative-caption", "live-free-semi-b1-caption"}
    assert {"sim-free-semi-val", "sim-static-test", "live-free-semi-b1", "robustness"} | batched | speculative <= set(
        sweeps)  # fmt: skip
    assert not any("speculative" in s for s in set(sweeps) - speculative)  # smoke: one run speculative
    for name in sweeps:
        table = SWEEP.validate(pd.read_parquet(out / "sweeps" / name / "sweep.parquet"))
        samples = SWEEP_SAMPLES.validate(pd.read_parquet(out / "sweeps" / name / "samples.parquet"))
        # every row says how many samples its point decoded (robustness gathers a full-model point per method)
        keys = ["method", "task", "threshold", "perturbation", "split"]
        per_key = table.groupby(keys)
        said = per_key["n_samples"].sum() / per_key["metric"].nunique()
        assert said.sort_index().equals(samples.groupby(keys).size().astype(float).sort_index()), name
    _speculative_answers_are_the_full_models(out / "sweeps")
    rob = pd.read_parquet(out / "sweeps" / "robustness" / "sweep.parquet")
    assert {"none", "gaussian_noise:1", "gaussian_noise:5", "typo:1", "typo:5"} == set(rob["perturbation"])
    assert set(rob["split"]) == {"test", "test_novel"} and (rob["timer"] == "cpu_wall").all()
    # guarantees: a certificate per calibration run, evaluated under the grid's shifts, and the attack
    for run in ("free-semi", "deebert-semi"):
        cert = json.loads((out / "calibration" / run / "calibration.json").read_text())
        assert cert["n"] == 24 and cert["epsilon"] == 0.2 and len(cert["p_values"]) == len(cert["thresholds"])
        if cert["threshold"] is not None:
            ev = pd.read_parquet(out / "calibration" / run / "evaluation.parquet")
            assert set(ev["perturbation"]) == {"none", "gaussian_noise", "typo"} and len(ev) == 5
        attack = pd.read_parquet(out / "attack" / run / "attack.parquet")
        assert set(attack["condition"]) == {"clean", "attacked"}
    # report: every figure (png + pdf), the tables, the claims
    for stem in FIGURES:
        assert (out / "figures" / f"{stem}.png").exists() and (out / "figures" / f"{stem}.pdf").exists(), stem
    report = (out / "REPORT.md").read_text()
    assert report.count("verdict **") >= 4 and "figures/speedup_measured_vqa_eager-speculative.png" in report
    assert (out / "tables" / "speedup_best_measured.csv").exists()
    second = _reproduce(tmp_path)
    assert second.returncode == 0 and second.stderr.count("reused") == len(STAGES)


def _speculative_answers_are_the_full_models(sweeps) -> None:
    """Lossless: at every threshold a speculative caption is the full model's, word for word (the lossy
    twin's full model, on the same images, captions the same), and a speculative VQA answer scores as
    the full model's on every question."""
    caps = pd.read_parquet(sweeps / "live-free-semi-b1-speculative-caption" / "captions.parquet")
    texts = caps.pivot(index="sample_id", columns="point", values="text")
    assert texts.shape == (8, 3)  # caption_rows images; two thresholds and the full model
    for point in texts.columns.drop("full"):
        assert (texts[point] == texts["full"]).all(), point
    twin = pd.read_parquet(sweeps / "live-free-semi-b1-caption" / "captions.parquet")
    assert set(twin["point"]) == set(caps["point"])  # every lossless point has its lossy twin
    assert (twin[twin["point"] == "full"].set_index("sample_id")["text"] == texts["full"]).all()
    vqa = pd.read_parquet(sweeps / "live-free-semi-b1-speculative" / "samples.parquet")
    per = vqa.pivot_table(index="sample_id", columns="method", values="value", aggfunc=list)
    assert len(per) == 12 and all(len(set(row["free"])) == 1 and row["free"][0] == row["full"][0]
                                  for _, row in per.iterrows())  # fmt: skip
    rows = pd.read_parquet(sweeps / "live-free-semi-b1-speculative" / "sweep.parquet")
    assert (rows["decode"] == "speculative").all() and rows["acceptance_rate"].dropna().between(0, 1).all()


def test_reproduce_unknown_profile(tmp_path):
    env = {**os.environ, "FREE_BENCH_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(
        [sys.executable, "-m", "free_bench", "reproduce", "--profile", "xl"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "invalid choice: 'xl'" in res.stderr
    assert not (tmp_path / "results").exists()


SEEDS_SCRIPT = """
import dataclasses, sys
from free_bench import config
p = config.PROFILES["smoke"]
config.PROFILES["smoke"] = dataclasses.replace(p, reproduce=dataclasses.replace(
    p.reproduce, runs=("free:semi", "deebert:semi"), seeds=(0, 1), exit_steps=6, exit_workers=2,
    live_runs=("free:semi",),
    robustness_runs=("free:semi",), perturbations=("typo",), severities=(3,)))
from free_bench.cli import main
sys.exit(main(["reproduce", "--profile", "smoke", "--results", sys.argv[1]]))
"""


def test_reproduce_with_several_exit_seeds_keeps_one_backbone(tmp_path):
    """The gpu profile trains exits with 3 seeds on one backbone, in worker processes: every seed's
    exits load on it, and the sweeps carry their seed so curves get CIs over seeds."""
    env = {**os.environ, "FREE_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SEEDS_SCRIPT, str(tmp_path / "r")], capture_output=True,
                         text=True, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "r" / "smoke"
    assert sorted(p.name for p in (out / "exits").iterdir()) == [
        "deebert-semi-s0", "deebert-semi-s1", "free-semi-s0", "free-semi-s1"]  # fmt: skip
    assert not list((tmp_path / "cache" / "backbones").glob("*seed1"))  # no second backbone
    workers = tmp_path / "cache" / "reproduce" / "smoke" / "exits" / "_workers"
    assert len(list(workers.glob("*.done"))) == 4 and len(list(workers.glob("worker-*.log"))) == 2
    assert json.loads((out / "manifest.json").read_text())["exits"]["exit_workers"] == 2
    seeds = {json.loads((d / "manifest.json").read_text())["seed"] for d in (out / "sweeps").glob("sim-*")}
    assert seeds == {0, 1}
    curves = pd.read_csv(out / "tables" / "speedup_curves.csv")
    assert (curves.loc[curves["method"] == "free", "n_seeds"] == 2).any()
    # deebert is calibrated but, with no live sweep and so no operating point, not attacked: said so
    guarantees = json.loads((out / "manifest.json").read_text())["guarantees"]
    assert set(guarantees["calibrated"]) == {"free-semi-s0", "deebert-semi-s0"}
    assert guarantees["attacked"] == ["free-semi-s0"] and "deebert-semi-s0" in guarantees["not_attacked"]


def test_exit_workers_fail_loudly_and_name_the_log(tmp_path, monkeypatch):
    """A chain that fails in a worker stops the stage with the worker's log tail, and no done marker."""
    from free_bench.core.errors import FreeBenchError
    from free_bench.pipeline.runs import run_chains

    monkeypatch.setenv("FREE_BENCH_CACHE", str(tmp_path / "cache"))
    plans = [{"name": f"bad-{k}", "work": str(tmp_path / f"w{k}"), "weight": 1, "sweeps": [], "eval": [], "eval_outputs": [],
              "train": {"out": str(tmp_path / f"w{k}"), "method": "nope", "backbone": "embedded:smoke", "regime": "semi"}}
             for k in range(2)]  # fmt: skip
    with pytest.raises(FreeBenchError, match=r"(?s)exit worker \d failed .*worker-\d\.log.*nope"):
        run_chains(plans, 2, tmp_path / "workers")
    assert not list((tmp_path / "workers").glob("*.done"))
