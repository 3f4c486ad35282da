"""The gpu profile's exit chains as planned (nothing run): the order workers take them in, and what
each chain evaluates (per-exit VQA on val and test; captions, the first seed's, on test only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from free_bench.pipeline.context import Context
from free_bench.pipeline.stages import chain_plan, live_grid, run_names


def test_gpu_chains_heaviest_first_and_captions_on_test_only(tmp_path: Path) -> None:
    ctx = Context(profile="gpu", seed=0, results=tmp_path / "results", cache=tmp_path / "cache")
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
