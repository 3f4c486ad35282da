"""`free-bench sweep` on the smoke profile: simulated and live points, resume, bad input."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
from clitools import cli

from free_bench.core.records import SWEEP, SWEEP_SAMPLES

pytestmark = pytest.mark.integration


_cli = cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_env):
    env = smoke_env
    exits = tmp_path_factory.mktemp("exits") / "free"
    res = _cli("train-exits", "--method", "free", "--backbone", "embedded:smoke", "--regime", "semi",
               "--exits", "1,2,3", "--steps", "4", "--device", "cpu", "--out", str(exits), env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return env, exits


def _sweep(env, exits, out, *extra: str) -> subprocess.CompletedProcess:
    return _cli("sweep", "--method", "free", "--exits", str(exits), "--split", "val", "--device", "cpu",
                "--max-rows", "12", "--out", str(out), *extra, env=env)  # fmt: skip


def test_simulated_sweep_and_resume(trained, tmp_path):
    env, exits = trained
    out = tmp_path / "sim"
    res = _sweep(
        env, exits, out, "--mode", "simulated", "--thresholds", "0", "0.5", "1", "--tasks", "vqa", "caption"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    df = SWEEP.validate(pd.read_parquet(out / "sweep.parquet"))
    assert set(df["metric"]) == {"vqa_accuracy", "CIDEr"} and set(df["method"]) == {"free", "full"}
    vqa = df[df.task == "vqa"].set_index("threshold")
    full = vqa[vqa.method == "full"].iloc[0]
    assert full.expected_speedup == pytest.approx(1.0) and full.mean_exit_layer == 4
    # threshold 0 always exits at layer 1; 1.0 never does, and equals the full model's answers
    assert vqa.loc[0.0, "mean_exit_layer"] == 1 and vqa.loc[0.0, "expected_speedup"] > 1.2
    assert vqa.loc[1.0, "value"] == full.value and vqa.loc[1.0, "expected_speedup"] < 1.0
    assert df["measured_speedup"].isna().all() and set(df["timer"]) == {"none"}
    assert all(json.loads(h) for h in df["exit_layer_hist"])
    _samples_agree_with_points(df, out)
    # resume: finished points are not recomputed, a missing one is
    point = out / "points" / "vqa__0.5.json"
    others = {p: p.stat().st_mtime_ns for p in (out / "points").glob("*__*.json")
              if p != point and not p.name.endswith(".texts.json")}  # fmt: skip
    assert len(others) == 2 * 4 - 1  # (full + 3 thresholds) x (vqa, caption), one removed
    assert len(list((out / "points").glob("caption__*.texts.json"))) == 4  # each caption point's captions
    point.unlink()
    res = _sweep(
        env, exits, out, "--mode", "simulated", "--thresholds", "0", "0.5", "1", "--tasks", "vqa", "caption"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert point.exists() and all(p.stat().st_mtime_ns == t for p, t in others.items())
    res = _sweep(env, exits, out, "--mode", "simulated", "--thresholds", "0.7")
    assert res.returncode != 0 and "made with other settings" in res.stderr
    saved = json.loads((out / "sweep_spec.json").read_text())
    del saved["spec"]["engine"]  # a folder from before sweeps recorded their engine
    (out / "sweep_spec.json").write_text(json.dumps(saved))
    res = _sweep(
        env, exits, out, "--mode", "simulated", "--thresholds", "0", "0.5", "1", "--tasks", "vqa", "caption"
    )
    assert res.returncode != 0 and 'spec.engine: (absent) recorded, "eager" asked' in res.stderr


def test_live_sweep_times_against_the_full_model(trained, tmp_path):
    env, exits = trained
    out = tmp_path / "live"
    res = _sweep(env, exits, out, "--mode", "live", "--thresholds", "0", "1", "--kv-policy", "deferred",
                 "--batch-size", "4", "--warmup", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    df = SWEEP.validate(pd.read_parquet(out / "sweep.parquet")).set_index("threshold")
    assert set(df["timer"]) == {"cpu_wall"} and (df["measured_speedup"] > 0).all()
    assert (df["latency_ms_p90"] >= df["latency_ms_median"]).all()
    full = df[df.method == "full"].iloc[0]
    assert df.loc[1.0, "value"] == full.value and df.loc[0.0, "mean_exit_layer"] == 1
    assert df.loc[0.0, "expected_speedup"] > 1.2
    # batches of 4: each layer counted once per step if any row ran it, never above the per-row count
    assert (df["expected_batch_speedup"] <= df["expected_speedup"] + 1e-9).all() and full.expected_batch_speedup == 1
    timings = json.loads((out / "manifest.json").read_text())["timings"]["vqa"]
    assert set(timings) == {"full", "0.0", "1.0"}  # the full model is timed beside every point
    assert all(t["engine_ms"] > t["prefix_ms"] > 0 and t["hf_ms"] > 0 for t in timings.values())
    samples = _samples_agree_with_points(df.reset_index(), out)
    assert set(samples["batch"]) == {0, 1, 2}  # 12 rows in batches of 4
    assert (samples["prefix_ms"] > 0).all() and (samples["prefix_ms"] < samples["full_latency_ms"]).all()
    by_point = samples.groupby("threshold")
    measured = by_point["full_latency_ms"].sum() / by_point["latency_ms"].sum()
    assert measured.to_dict() == pytest.approx(df["measured_speedup"].to_dict())
    # the full model's point is made of the decodes timed beside the first threshold, not decoded again
    assert timings["full"] == timings["0.0"]
    full_samples = samples[samples.method == "full"].set_index("sample_id")
    beside = samples[samples.threshold == 0.0].set_index("sample_id")
    assert (full_samples["full_latency_ms"] == beside["full_latency_ms"]).all()
    # a full point lost on its own is decoded alone on resume; the finished thresholds stay as they are
    kept = {f: f.stat().st_mtime_ns for f in (out / "points").glob("vqa__[01]*")}
    for f in [*(out / "points").glob("vqa__full*"), out / "manifest.json"]:
        f.unlink()
    res = _sweep(env, exits, out, "--mode", "live", "--thresholds", "0", "1", "--kv-policy", "deferred",
                 "--batch-size", "4", "--warmup", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    again = SWEEP.validate(pd.read_parquet(out / "sweep.parquet"))
    assert again[again.method == "full"]["value"].iloc[0] == full.value
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())


def test_a_speculative_sweep_answers_as_the_full_model(trained, tmp_path):
    """Drafted by the exits, verified by one full pass: every threshold's answers and accuracy are the
    full model's; the rows say how many drafts were kept and how many tokens a pass gave."""
    env, exits = trained
    out = tmp_path / "spec"
    res = _sweep(env, exits, out, "--mode", "live", "--thresholds", "0", "0.9", "--decode", "speculative",
                 "--draft-len", "3", "--warmup", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    df = SWEEP.validate(pd.read_parquet(out / "sweep.parquet"))
    full = df[df.method == "full"].iloc[0]
    points = df[df.method == "free"]
    assert (points["value"] == full.value).all() and len(points) == 2
    assert (points["decode"] == "speculative").all() and (points["draft_len"] == 3).all()
    assert points["acceptance_rate"].between(0, 1).all() and (points["tokens_per_pass"] >= 1).all()
    assert "acceptance_rate" in res.stdout
    samples = SWEEP_SAMPLES.validate(pd.read_parquet(out / "samples.parquet"))
    per = samples.pivot_table(index="sample_id", columns="threshold", values="value")
    assert (per[0.0] == per[0.9]).all()


def _samples_agree_with_points(df: pd.DataFrame, out) -> pd.DataFrame:
    """samples.parquet: a row per (point, sample), whose means and sums give the point's own numbers."""
    samples = SWEEP_SAMPLES.validate(pd.read_parquet(out / "samples.parquet"))
    for (task, t), g in samples.groupby(["task", "threshold"]):
        row = df[(df.task == task) & (df.threshold == t)].iloc[0]
        assert len(g) == 12 if task == "vqa" else len(g) == g["sample_id"].nunique()
        assert g["value"].mean() == pytest.approx(row.value)
        assert g["full_cost_layers"].sum() / g["cost_layers"].sum() == pytest.approx(row.expected_speedup)
    return samples


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "live", "--thresholds", "1.5"], "probability in \\[0, 1\\]"),
        (["--mode", "live", "--thresholds", "0.5", "--kv-policy", "lazy"], "--kv-policy"),
        (["--mode", "fast", "--thresholds", "0.5"], "mode"),
        (["--mode", "live", "--thresholds", "0.5", "--perturb", "blur:7"], "severity"),
        (["--mode", "live", "--thresholds", "0.5", "--engine", "jit"], "engine"),
        (
            ["--mode", "simulated", "--thresholds", "0.5", "--engine", "graphs"],
            "--engine graphs decodes live",
        ),
        (
            ["--mode", "live", "--thresholds", "0.5", "--engine", "graphs", "--kv-policy", "deferred"],
            "kv policies",
        ),
        (["--mode", "live", "--thresholds", "0.5", "--engine", "graphs", "--device", "cpu"], "CUDA"),
        (["--mode", "live", "--thresholds", "0.5", "--decode", "speculative", "--batch-size", "4"],
         "--decode speculative decodes live at batch 1"),
        (["--mode", "live", "--thresholds", "0.5", "--decode", "speculative", "--draft-len", "0"], "--draft-len"),
    ],
)
def test_bad_input_writes_nothing(trained, tmp_path, extra, message):
    env, exits = trained
    out = tmp_path / "bad"
    res = _sweep(env, exits, out, *extra)
    assert res.returncode != 0 and message.replace("\\", "") in res.stderr.replace("\\", ""), res.stderr[
        -500:
    ]
    assert not out.exists()


@pytest.mark.parametrize("mode", ["simulated", "live"])
def test_caption_texts_let_cider_be_scored_elsewhere(trained, tmp_path, mode):
    """Where pycocoevalcap cannot run (the GPU host) a caption point's CIDEr is NaN; its saved texts
    and references (captions.parquet) let `score-captions <sweep folder>` fill in what the sweep itself
    computes where it can."""
    env, exits = trained
    out = tmp_path / mode
    res = _sweep(env, exits, out, "--mode", mode, "--thresholds", "0", "1", "--tasks", "caption",
                 "--max-rows", "6", "--warmup", "0")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    caps = pd.read_parquet(out / "captions.parquet")
    assert set(caps["point"]) == {"full", "0.0", "1.0"} and len(caps) == 3 * 6
    assert caps["text"].map(len).gt(0).all() and caps["references"].map(len).gt(0).all()
    sweep, samples = pd.read_parquet(out / "sweep.parquet"), pd.read_parquet(out / "samples.parquet")
    assert sweep["value"].notna().all()
    sweep.assign(value=float("nan")).to_parquet(out / "sweep.parquet")  # as the GPU host leaves them
    samples.assign(value=float("nan")).to_parquet(out / "samples.parquet")
    res = _cli("score-captions", str(out), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    key = ["method", "threshold", "task", "metric"]
    again = pd.read_parquet(out / "sweep.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, sweep.sort_values(key).reset_index(drop=True), check_exact=False)
    skey = ["method", "threshold", "sample_id"]
    rescored = pd.read_parquet(out / "samples.parquet").sort_values(skey).reset_index(drop=True)
    assert rescored["value"].to_numpy() == pytest.approx(samples.sort_values(skey)["value"].to_numpy())


def test_score_captions_rejects_a_sweep_without_texts(trained, tmp_path):
    env, _ = trained
    (tmp_path / "empty").mkdir()
    res = _cli("score-captions", str(tmp_path / "empty"), env=env)
    assert res.returncode == 2 and "captions.parquet" in res.stderr


def test_planned_live_sweeps_share_one_backbone(trained, tmp_path, monkeypatch):
    """reproduce's live sweeps load their exits onto one backbone, loaded on first need: the full
    model's captured decoders and warmed shapes live on it and carry over from sweep to sweep; a
    finished sweep loads nothing."""
    from free_bench.models import load as L
    from free_bench.pipeline import plans as P
    from free_bench.pipeline import stages as R

    env, exits = trained
    monkeypatch.setenv("FREE_BENCH_CACHE", env["FREE_BENCH_CACHE"])
    loads = []
    real = L.load_backbone
    monkeypatch.setattr(L, "load_backbone", lambda *a, **k: loads.append(a) or real(*a, **k))

    def plan(name: str, method: str, threshold: float) -> dict:
        spec = {"method": method, "exits": str(exits), "split": "val", "mode": "live",
                "thresholds": [threshold], "max_rows": 4, "warmup": 1}  # fmt: skip
        return {"name": name, "seed": 0, "spec": spec, "work": str(tmp_path / name), "dst": None}

    shared = R.shared_backbone(exits)
    first = P.run_planned(plan("free", "free", 0.5), backbone=shared)
    P.run_planned(plan("static", "static", 2.0), backbone=shared)
    assert len(loads) == 1 and set(first["method"]) == {"free", "full"}
    warmed = shared().__dict__["_warmed_shapes"][("eager",)]
    assert warmed  # the shapes the first sweep warmed, which the second found warmed
    P.run_planned(plan("free", "free", 0.5), backbone=R.shared_backbone(exits))  # finished: no load
    assert len(loads) == 1
