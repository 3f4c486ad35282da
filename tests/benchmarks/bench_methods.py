"""Every exit method decoded live at a fixed operating point, on the smoke profile: the numbers CI
tracks for regressions (`nox -s tests` compares them with `results/smoke/bench_baseline.json`).
`FREE_BENCH_BENCH_PROFILE=gpu` runs the same on the gpu profile on CUDA, on the exits a gpu
`reproduce` left in the cache (seed 0), else on exits trained here: the H200 baseline
(`results/gpu/bench_baseline.json`).

Each benchmark is one live sweep point, exactly as `free-bench sweep --mode live` measures it: the
first `ROWS` test questions at batch 1, the full model timed beside the early-exit decode on every
row (interleaved), `propagate` KV policy, exits trained once into the cache (`train-exits`, the
profile's steps) and consulted at the profile's sparse placement. The operating points are fixed
thresholds, not recalibrated, so a change in what the exits decide shows up as a change in the exit
layer and quality, and a slower engine as a lower measured speedup. Beside these greedy batch-1
points, each trained method at the same threshold is decoded speculatively (the exits draft up to 4
tokens, a full pass verifies them: the answers must be the full model's; ids `free-speculative`) and
in compacted batches of `BATCH` rows (ids `free-b4` on smoke, `free-b8` on gpu), on every engine the
device runs (`free-graphs-speculative`, `free-graphs-b8` on CUDA).

`extra_info` carries what `free-bench regress` judges, `measured_speedup` and `quality` (VQA
accuracy), and for reading `expected_speedup`, `mean_exit_layer`, the full model's quality, how the
point decoded (`decode`, `draft_len`, `batch_size`, `compact`; speculative points add
`acceptance_rate` and `tokens_per_pass`) and the machine state. The smoke backbone is tiny and barely
trained: the point is tracking, not quality.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pandas as pd
import pytest
import torch

from free_bench.cli import main
from free_bench.config import cache_dir, get_profile
from free_bench.core.records import device_name
from free_bench.evaluation.sweep import SweepSpec, run_sweep

PROFILE = os.environ.get("FREE_BENCH_BENCH_PROFILE", "smoke")
DEVICE = "cuda" if PROFILE == "gpu" else "cpu"
ROWS = 100 if PROFILE == "gpu" else 64
# threshold per method (static: the exit layer), fixed once: smoke, where its exits leave at mixed
# depths; gpu, the val operating points (<= 1 point drop) of the first gpu reproduce run
OPERATING_POINTS = {
    "smoke": {"free": 0.05, "deebert": 4.0, "pabee": 1.0, "distill": 0.05, "static": 2.0},
    "gpu": {"free": 0.69, "deebert": 0.75, "pabee": 3.0, "distill": 0.54, "static": 20.0},
}[PROFILE]
TRAINED = ("free", "deebert", "pabee", "distill")
BATCH = 8 if PROFILE == "gpu" else 4  # rows per batch of the batched points (compacted)
DRAFT_LEN = 4  # speculative points: most tokens the exits draft before a verification pass


@pytest.fixture(scope="module")
def exits_of() -> dict[str, Path]:
    """Semi-supervised exits of every trained method on the profile's backbone (pretrained here when
    not cached): a reproduce run's seed-0 exits where they exist, else trained here."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"profile {PROFILE} is benchmarked on CUDA")
    reproduced = cache_dir() / "reproduce" / PROFILE / "exits"
    if all((reproduced / f"{m}-semi-s0" / "config.json").exists() for m in TRAINED):
        return {m: reproduced / f"{m}-semi-s0" for m in TRAINED}
    root = cache_dir() / "bench" / f"{PROFILE}-exits"
    # loading never trains: pretrain the profile's backbone first (reused when cached with this recipe)
    pretrain = ["pretrain", "--profile", PROFILE, "--device", DEVICE, "--no-eval"]
    assert main(pretrain) == 0, f"pretrain failed: {' '.join(pretrain)}"
    for method in TRAINED:
        out = root / f"{method}-semi"
        if not (out / "config.json").exists():
            argv = ["train-exits", "--method", method, "--backbone", f"embedded:{PROFILE}", "--regime", "semi",
                    "--out", str(out), "--device", DEVICE]  # fmt: skip
            assert main(argv) == 0, f"train-exits failed: {' '.join(argv)}"
    return {m: root / f"{m}-semi" for m in TRAINED}


# on CUDA each point is decoded by both engines (graphs: CUDA graphs per segment, engine.graphs)
ENGINES = ("eager", "graphs") if DEVICE == "cuda" else ("eager",)


def _id(method: str, engine: str, decode: str, batch: int) -> str:
    """free, free-graphs, free-speculative, free-graphs-b8, ...: method, engine, then the decode."""
    parts = [method] + ([engine] if engine != "eager" else [])
    parts += ["speculative"] if decode == "speculative" else ([f"b{batch}"] if batch > 1 else [])
    return "-".join(parts)


# (method, engine, decode, batch): every method greedy at batch 1, then the trained ones speculative and batched
GREEDY = [(m, e, "greedy", 1) for e in ENGINES for m in OPERATING_POINTS]
SPECULATIVE = [(m, e, "speculative", 1) for e in ENGINES for m in TRAINED]
BATCHED = [(m, e, "greedy", BATCH) for e in ENGINES for m in TRAINED]
POINTS = [pytest.param(*k, id=_id(*k)) for k in GREEDY + SPECULATIVE + BATCHED]


@pytest.mark.parametrize(("method", "engine", "decode", "batch"), POINTS)
def test_method_at_its_operating_point(
    benchmark, exits_of: dict, tmp_path: Path, method: str, engine: str, decode: str, batch: int
) -> None:
    if DEVICE == "cpu":
        torch.set_num_threads(1)  # one thread: less noise on a shared 2-core machine
    threshold = OPERATING_POINTS[method]
    spec = SweepSpec(method=method, exits=str(exits_of["free" if method == "static" else method]),
                     split="test", mode="live", thresholds=(threshold,), max_rows=ROWS,
                     exits_at=get_profile(PROFILE).exits.sparse, engine=engine, decode=decode,
                     draft_len=DRAFT_LEN, batch_size=batch)  # fmt: skip
    runs = iter(range(100))
    out = tmp_path / "run"

    def sweep():
        nonlocal out
        out = tmp_path / f"run{next(runs)}"
        return run_sweep(spec, out, device=DEVICE, progress=False)

    df = benchmark.pedantic(sweep, rounds=1, iterations=1)
    vqa = df[df["metric"] == "vqa_accuracy"].set_index("method")
    early, full = vqa.loc[method], vqa.loc["full"]
    assert (
        early["timer"] == ("cuda_event" if DEVICE == "cuda" else "cpu_wall") and early["measured_speedup"] > 0
    )
    speculative = {}
    if decode == "speculative":  # lossless: the full model's answers, question by question
        samples = pd.read_parquet(out / "samples.parquet").pivot(index="sample_id", columns="method", values="value")
        same = float((samples[method] == samples["full"]).mean())
        # in fp32 exactly the full model's; in bf16 a verification pass over several positions may round
        # a near-tie differently from the one-token steps the full model takes: reported, not assumed
        if DEVICE == "cpu":
            assert same == 1.0 and early["value"] == full["value"]
        speculative = {k: float(early[k]) for k in ("acceptance_rate", "tokens_per_pass")}
        speculative["answers_as_full_model"] = same
    benchmark.extra_info.update(
        {
            "profile": PROFILE,
            "method": method,
            "threshold": threshold,
            "rows": ROWS,
            "kv_policy": spec.kv_policy,
            "engine": engine,
            "decode": decode,
            "draft_len": DRAFT_LEN if decode == "speculative" else 0,
            "batch_size": batch,
            "compact": spec.compact,
            "measured_speedup": float(early["measured_speedup"]),
            "expected_speedup": float(early["expected_speedup"]),
            "mean_exit_layer": float(early["mean_exit_layer"]),
            "quality": float(early["value"]),
            "quality_metric": "vqa_accuracy",
            "full_quality": float(full["value"]),
            "latency_ms_median": float(early["latency_ms_median"]),
            **speculative,
            "machine": {  # the keys of bench_engine.machine_state, which `free-bench regress` reads
                "device_name": str(early["device"])
                if DEVICE == "cuda"
                else platform.processor() or platform.machine(),
                "timer": early["timer"],
                "dtype": "bfloat16" if DEVICE == "cuda" else "float32",
                "batch_size": batch,
                "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "host": device_name(),
            },
        }
    )
