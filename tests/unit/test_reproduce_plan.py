"""The gpu profile's exit chains as planned (nothing run): the order workers take them in, and what
each chain evaluates (per-exit VQA on val and test; captions, the first seed's, on test only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from free_bench.config import get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.pipeline.context import Context
from free_bench.pipeline.live import live_plans
from free_bench.pipeline.stages import (
    chain_plan,
    first_run,
    live_grid,
    live_runs,
    robustness_stage,
    run_names,
)


def test_gpu_chains_heaviest_first_and_captions_on_test_only(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, seeds=(0, 1, 2))
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


def _ctx(tmp_path: Path, profile: str = "gpu", **changes) -> Context:
    base = get_profile(profile)
    settings = dataclasses.replace(base, reproduce=dataclasses.replace(base.reproduce, **changes))
    return Context(profile=profile, seed=0, results=tmp_path / "results", cache=tmp_path / "cache",
                   settings=settings, backbone=f"embedded:{profile}")  # fmt: skip


def _plans(ctx: Context, engines: list[str]) -> dict[str, dict]:
    """The stage's live sweeps by name, at made-up val operating points (nothing is decoded)."""
    cfg = ctx.settings.reproduce
    live = [n for n, m, r, s in run_names(ctx) if s == cfg.seeds[0]
            and (cfg.live_runs is None or f"{m}:{r}" in cfg.live_runs)]  # fmt: skip
    ops = {n: (0.8, [0.78, 0.8]) for n in live} | {"static": (8.0, [8.0, 12.0])}
    runs = live_runs(ctx, ops)
    deferred = next(r for r in runs if r.name == first_run(ctx))
    plans = live_plans(ctx, runs, engines, deferred)
    assert len({p["name"] for p in plans}) == len(plans)
    return {p["name"]: p for p in plans}


def test_every_live_run_is_decoded_batched_and_speculatively_on_every_engine(tmp_path: Path) -> None:
    """With batch_engines, speculative_engines and speculative_runs unset, every live run and static on each
    engine: batch 1 at its live points; 8, 32 and 64 rows at the operating point, compacted and riding
    along; speculative VQA and captions at the batch-1 thresholds, each beside its lossy twin on the same
    rows. The first run also deferred (eager)."""
    ctx = _ctx(tmp_path, seeds=(0, 1, 2), batch_engines=None, speculative_engines=None, speculative_runs=None)
    plans = _plans(ctx, ["eager", "graphs"])
    runs = ["free-semi-s0", "deebert-semi-s0", "pabee-semi-s0", "distill-semi-s0", "static"]
    per_engine = ["b1", "b8-compact", "b8-no-compact", "b32-compact", "b32-no-compact", "b64-compact",
                  "b64-no-compact", "b1-speculative", "b1-speculative-caption", "b1-caption"]  # fmt: skip
    graphs = [f"b1-graphs{s[2:]}" if s.startswith("b1") else f"{s}-graphs" for s in per_engine]
    want = {f"live-{r}-{s}" for r in runs for s in per_engine + graphs}
    assert set(plans) == want | {"live-free-semi-s0-b1-deferred"}
    assert "live-static-b32-no-compact-graphs" in plans and "live-deebert-semi-s0-b1-graphs-speculative" in plans
    for name, p in plans.items():
        spec, tag = p["spec"], "graphs" if "graphs" in name else "eager"
        assert spec["split"] == "test" and spec["mode"] == "live" and spec.get("engine", "eager") == tag
        assert spec.get("hf_baseline", True) == (tag == "eager")  # HF timed beside the eager engine's sweeps
        run = name.removeprefix("live-").split("-b")[0]
        assert spec["exits"] == str(ctx.cache / "exits" / ("free-semi-s0" if run == "static" else run))
        b1 = plans[f"live-{run}-b1" + ("-graphs" if tag == "graphs" else "")]["spec"]
        if "-compact" in name:  # b<B>-compact and b<B>-no-compact
            b = int(name.split("-b")[-1].split("-")[0])
            assert spec["batch_size"] == b and spec["max_rows"] == max(100, 4 * b)
            op = 8.0 if run == "static" else 0.8  # the operating points `_plans` made up
            assert spec["compact"] == ("no-compact" not in name) and spec["thresholds"] == [op]
        elif "caption" in name or "speculative" in name:
            assert spec["thresholds"] == b1["thresholds"]  # every lossless point has its lossy twin
            assert spec.get("decode", "greedy") == ("speculative" if "speculative" in name else "greedy")
            assert spec.get("draft_len", 4) == 4 and spec.get("batch_size", 1) == 1
            caption = name.endswith("caption")
            assert spec.get("tasks", ["vqa"]) == (["caption"] if caption else ["vqa"])
            assert spec["max_rows"] == (100 if caption else b1["max_rows"])
    assert plans["live-free-semi-s0-b1-deferred"]["spec"]["kv_policy"] == "deferred"


def test_the_gpu_profile_batches_and_drafts_on_the_graphs_engine(tmp_path: Path) -> None:
    """The gpu profile: batch 1 on both engines for every live run and static; the batch sizes, and FREE's and
    static's speculative decodes with their lossy twins, on the graphs engine alone."""
    plans = _plans(_ctx(tmp_path), ["eager", "graphs"])
    runs = ["free-semi", "deebert-semi", "pabee-semi", "distill-semi", "static"]
    batched = [f"b{b}-{c}-graphs" for b in (8, 32, 64) for c in ("compact", "no-compact")]
    drafted = ["b1-graphs-speculative", "b1-graphs-speculative-caption", "b1-graphs-caption"]
    want = {f"live-{r}-{s}" for r in runs for s in ["b1", "b1-graphs", *batched]}
    want |= {f"live-{r}-{s}" for r in ("free-semi", "static") for s in drafted}
    assert set(plans) == want | {"live-free-semi-b1-deferred"}
    assert _plans(_ctx(tmp_path), ["eager"]).keys() == {n for n in want if "graphs" not in n} | {
        "live-free-semi-b1-deferred"}  # without CUDA: batch 1 and deferred alone


def test_a_machine_without_cuda_plans_no_graphs_sweeps_and_smoke_stays_small(tmp_path: Path) -> None:
    smoke = _plans(_ctx(tmp_path, "smoke"), ["eager"])
    assert not any("graphs" in n for n in smoke)
    speculative = {n for n in smoke if "speculative" in n or n.endswith("caption")}
    assert speculative == {"live-free-semi-b1-speculative", "live-free-semi-b1-speculative-caption",
                           "live-free-semi-b1-caption"}  # fmt: skip
    assert {"live-static-b4-compact", "live-pabee-semi-b4-no-compact"} <= set(smoke)
    assert smoke["live-static-b4-no-compact"]["spec"]["max_rows"] == 16  # max(live_rows 12, 4 x 4)
    cpu = _plans(_ctx(tmp_path, "cpu"), ["eager"])  # its 25-minute budget: FREE and static speculative
    assert {n.split("-b1")[0] for n in cpu if "speculative" in n} == {"live-free-semi", "live-static"}
    assert sum(n.endswith("-b32-no-compact") for n in cpu) == 7  # six runs and static, all batched
    vqa_only = _plans(_ctx(tmp_path, "smoke", tasks=("vqa",), speculative_runs=None, draft_len=2), ["eager"])
    assert not any("caption" in n for n in vqa_only)
    assert {p["spec"]["draft_len"] for n, p in vqa_only.items() if n.endswith("speculative")} == {2}
    assert sum(n.endswith("-speculative") for n in vqa_only) == 6  # every live run and static


@pytest.mark.parametrize(("changes", "match"), [
    ({"speculative_runs": ("free:semi", "deebert:semi"), "live_runs": ("free:semi",)}, r"deebert:semi.*live_runs"),
    ({"speculative_runs": ("fre:semi",)}, "fre"),
    ({"speculative_tasks": ("vqa", "captions")}, "captions"),
    ({"draft_len": 0}, "draft-len"),
    ({"batch_sizes": (0,)}, "batch size"),
    ({"batch_engines": ("graph",)}, "graph"),
    ({"speculative_engines": ("eagre",)}, "eagre"),
])  # fmt: skip
def test_bad_live_settings_stop_the_stage_before_any_decoding(tmp_path: Path, changes, match) -> None:
    with pytest.raises(FreeBenchError, match=match):
        _plans(_ctx(tmp_path, "smoke", **changes), ["eager"])


def test_a_speculative_run_this_configuration_does_not_train_is_skipped(tmp_path: Path) -> None:
    """As robustness_runs: a settings file with fewer runs keeps its profile's speculative_runs."""
    plans = _plans(_ctx(tmp_path, "smoke", runs=("deebert:semi",)), ["eager"])
    assert not any("speculative" in n for n in plans) and "live-deebert-semi-b1" in plans


def test_the_robustness_grid_names_its_engine_and_decodes_eagerly_without_cuda(monkeypatch) -> None:
    """The gpu profile decodes its grid on the graphs engine; without CUDA the grid falls to the eager
    engine with the reason recorded, and a name that is no engine is refused."""
    import dataclasses

    import torch

    from free_bench.config import get_profile
    from free_bench.core.errors import FreeBenchError
    from free_bench.pipeline.stages import robustness_engine

    gpu = get_profile("gpu").reproduce
    assert gpu.robustness_engine == "graphs"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert robustness_engine(gpu) == ("eager", "graphs needs CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert robustness_engine(gpu) == ("graphs", None)
    assert robustness_engine(get_profile("cpu").reproduce) == ("eager", None)
    with pytest.raises(FreeBenchError, match="robustness_engine"):
        robustness_engine(dataclasses.replace(gpu, robustness_engine="fast"))
