"""Batches on the graphs engine at BLIP-2 OPT-2.7b's LM shape (random init, bf16, EOS off, `NEW_TOKENS`
tokens): does a batch save what its own expectation says, and what does a bucket cost per step?

- per bucket (1, 8, 32, 64): the full model's ms per token, graphs and eager engines. At batch-1 widths a
  layer costs about the same for 1 or 64 rows, so a smaller bucket saves little: this is what
  compaction into one could save at most;
- per batch: a static exit at the middle layer (every row leaves there) and DeeBERT-style exits at a
  threshold that sends rows to different exits, each timed against the full model at the same batch
  (graphs engine, interleaved), beside the batch's own expectation (`expected_batch_speedup`: each
  layer counted once per step if any row ran it) and the per-row one.

The graphs engine runs as `VARIANT` (bench_engine.VARIANTS), set on `generate` for the run: one
compiled layer function per bucket, where the per-segment compiling of `engine="graphs"` takes minutes
per bucket at this size.

`extra_info` carries `batches`: one entry per (method, batch) with `measured_speedup`,
`expected_batch_speedup`, `expected_speedup` and `measured_over_batch_expected`.
"""

from __future__ import annotations

import pytest
import torch
from bench_engine import VARIANTS, machine_state
from bench_runner import NEW_TOKENS, OPT_2_7B

from free_bench.engine import generate, time_region
from free_bench.methods import get_method
from free_bench.models import from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

BATCHES = (1, 8, 32, 64)
VARIANT = "layers"


def _mixed_threshold(bb, method, inputs: dict) -> float:
    """An entropy threshold at which the first exit takes about a third of the tokens (bisection on
    the decode itself): rows then leave at different exits."""
    low, high = 0.0, 20.0
    for _ in range(12):
        mid = (low + high) / 2
        layers = generate(bb, method, **inputs, max_new_tokens=8, threshold=mid, engine="graphs").exit_layers
        share = float((layers == method.layers[0]).float().mean())
        low, high = (low, mid) if share > 1 / 3 else (mid, high)
    return (low + high) / 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")
def test_graphs_batches_save_what_the_batch_expects(benchmark, monkeypatch) -> None:
    import importlib

    # the module (free_bench.engine's `generate` is the function)
    monkeypatch.setattr(importlib.import_module("free_bench.engine.generate"), "GRAPHS_ENGINE", VARIANTS[VARIANT])
    dtype = torch.bfloat16
    bb = from_hf(build_tiny_blip2("opt", 0, device="cuda", dtype=dtype, **OPT_2_7B))
    bb.language_model.generation_config.eos_token_id = bb.lm_config.eos_token_id = None
    half = bb.num_layers // 2
    exits = [half // 2, half, bb.num_layers - half // 2]
    static = get_method("static")(bb, exits).eval()
    deebert = get_method("deebert")(bb, exits).eval()
    batches, buckets = [], {}
    for b in BATCHES:
        inputs = {k: v.cuda() for k, v in tiny_inputs(bb.model, b, text_len=8, seed=b).items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        kw = dict(warmup=2, repeats=5, device="cuda", dtype=dtype, batch_size=b)
        mixed = _mixed_threshold(bb, deebert, inputs)

        def run(method=None, threshold=None, n=NEW_TOKENS, engine="graphs", inputs=inputs):
            return lambda: generate(bb, method, **inputs, max_new_tokens=n, threshold=threshold, engine=engine)

        regions = {"full": run(), "full_1": run(n=1), "static": run(static, half), "deebert": run(deebert, mixed)}
        samples: dict[str, list[float]] = {k: [] for k in regions}
        for _ in range(3):  # interleaved rounds
            for key, fn in regions.items():
                samples[key] += list(time_region(fn, **kw).samples_ms)
        med = {k: torch.tensor(v).median().item() for k, v in samples.items()}
        for key, fn in (("eager_full", run(engine="eager")), ("eager_full_1", run(n=1, engine="eager"))):
            med[key] = time_region(fn, **{**kw, "warmup": 1, "repeats": 3}).median_ms  # the slow reference: once
        buckets[b] = {
            "graphs_ms_per_token": (med["full"] - med["full_1"]) / (NEW_TOKENS - 1),
            "eager_ms_per_token": (med["eager_full"] - med["eager_full_1"]) / (NEW_TOKENS - 1),
            "graphs_ms_per_decode": med["full"],
        }
        for name, method, t in (("static", static, half), ("deebert", deebert, mixed)):
            res = generate(bb, method, **inputs, max_new_tokens=NEW_TOKENS, threshold=t, engine="graphs")
            measured = med["full"] / med[name]
            batches.append({
                "method": name, "batch_size": b, "threshold": t, "measured_speedup": measured,
                "expected_batch_speedup": res.expected_batch_speedup, "expected_speedup": res.expected_speedup,
                "measured_over_batch_expected": measured / res.expected_batch_speedup,
                "mean_exit_layer": float(res.exit_layers.float().mean()),
                "exit_layer_shares": {int(k): float((res.exit_layers == k).float().mean())
                                      for k in res.exit_layers.unique().tolist()},
                "ms_full": med["full"], "ms_exits": med[name],
            })  # fmt: skip
    benchmark.pedantic(run(static, half), rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update({
        "model": "random-init OPT-2.7b LM shape", "new_tokens": NEW_TOKENS, "graphs_variant": VARIANT, "batches": batches,
        "buckets": buckets, "machine": machine_state(time_region(run(), warmup=1, repeats=1, device="cuda",
                                                                 dtype=dtype, batch_size=BATCHES[-1])),
    })  # fmt: skip
