"""The graphs engine at the gpu profile's shapes: one graph per step against one graph per segment, T5
beside OPT, and batches. Random weights of the embedded BLIP-2 that `free-bench pretrain --profile gpu`
trains (OPT and its T5 variant: 512 wide, 24 decoder layers), bf16, EOS off, exits at the profile's
sparse placement (4, 8, 12, 16, 20).

At this width a segment of a few layers runs in tens of microseconds, so the per-segment launch and the
host read of each exit's verdict are a large share of a token: what one graph per step (conditional
nodes, `graphs.conditional`) saves is measured here, per variant and method:

- `ms_per_token_full`: the full model's (32 tokens - 1 token) / 31;
- a static exit at the middle exit (layer 12), and DeeBERT-style and FREE-style exits at a threshold that sends tokens to
  several exits (bisected on the eager engine): the decode phase's measured speedup (tokens 2..32,
  each region timed against the full model in the same variant, interleaved) over its expected one
  (layer-equivalents of the same tokens), and the whole decode's measured speedup over the expected
  one with the prefix (image side) priced at its measured time;
- batches (1, 8, 32, 64) on one graph per step: the full model's ms per token and DeeBERT-style exits
  against the batch's own expectation (each layer counted once per step if any row ran it), compacted
  and riding along.

- decoupled rows (a row that exited starts its next token while deeper rows finish theirs) against rows
  riding along, in buckets of 8, 32 and 64: the segment calls each schedule makes for the exit depths a
  DeeBERT-style decode recorded, replayed on the bucket's captured segments (`graphs.decoupled`).

`extra_info` carries `steps`, `batches` and `decoupled`: one entry per measured point.
"""

from __future__ import annotations

import time

import pytest
import torch
from bench_engine import machine_state

from free_bench.engine import generate, time_region
from free_bench.engine.generate import graph_decoder, special_tokens
from free_bench.engine.graphs.batched import decode_batch
from free_bench.engine.graphs.decoupled import decoupled_ticks, layer_count, replay_ticks, riding_ticks
from free_bench.methods import get_method, parse_placement
from free_bench.models import from_hf
from free_bench.models.embedded import build_model
from free_bench.models.tiny import tiny_inputs

NEW_TOKENS = 32
SPARSE = "4,8,12,16,20"
VARIANTS = {"segments": {"conditional": False}, "step": {"conditional": True}}
# OPT only: one compiled layer function for every layer and decoder (runner_fused), where the default
# compiles each segment of each decoder: what building many decoders (methods x buckets) costs
LAYERS = {"conditional": True, "compile_segments": False, "compile_layers": True}
BATCHES = (1, 8, 32, 64)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")


def _backbone(lm: str):
    bb = from_hf(build_model("gpu", lm), device="cuda", dtype=torch.bfloat16)
    bb.language_model.generation_config.eos_token_id = bb.lm_config.eos_token_id = None
    return bb


def _inputs(bb, rows: int, seed: int = 0) -> dict:
    inputs = {k: v.cuda() for k, v in tiny_inputs(bb.model, rows, text_len=8, seed=seed).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    return inputs


def _mixed(bb, method, inputs: dict) -> float:
    """A threshold at which the first exit takes about a third of the tokens (bisection on the eager
    engine): tokens then leave at several exits."""
    low, high = (0.0, 20.0) if method.rule == "entropy" else (0.0, 1.0)
    for _ in range(12):
        mid = (low + high) / 2
        layers = generate(bb, method, **inputs, max_new_tokens=8, threshold=mid).exit_layers
        share = float((layers == method.layers[0]).float().mean())
        fires_more = share > 1 / 3
        if method.rule == "entropy":  # a higher entropy threshold lets more out
            low, high = (low, mid) if fires_more else (mid, high)
        else:  # a higher max-prob threshold lets fewer out
            low, high = (mid, high) if fires_more else (low, mid)
    return (low + high) / 2


def _decode(bb, method, inputs, threshold, n: int, options: dict, rows: int = 1, compact: bool = True):
    eos, pad = special_tokens(bb)
    args = (inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])

    def decoder_for(b: int):
        return graph_decoder(bb, method, "propagate", threshold, inputs["input_ids"], NEW_TOKENS, b, **options)

    if rows == 1:
        return lambda: decoder_for(1).decode(*args, max_new_tokens=n, threshold=threshold, eos_ids=[], pad_id=pad)
    return lambda: decode_batch(decoder_for, *args, max_new_tokens=n, threshold=threshold, eos_ids=[],
                                pad_id=pad, compact=compact)  # fmt: skip


def _timed(regions: dict, rounds: int = 3, **kw) -> dict[str, float]:
    """Median ms per region over interleaved rounds (clock drift hits every region alike)."""
    samples: dict[str, list[float]] = {k: [] for k in regions}
    for _ in range(rounds):
        for key, fn in regions.items():
            samples[key] += list(time_region(fn, **kw).samples_ms)
    return {k: torch.tensor(v).median().item() for k, v in samples.items()}


@gpu
@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_one_graph_per_step_against_one_per_segment(benchmark, lm: str) -> None:
    bb = _backbone(lm)
    inputs = _inputs(bb, 1)
    exits = parse_placement(SPARSE, bb.num_layers)
    methods = {"static": (get_method("static")(bb, exits).eval(), float(exits[len(exits) // 2]))}
    for name in ("deebert", "free"):
        m = get_method(name)(bb, exits).eval()
        methods[name] = (m, _mixed(bb, m, inputs))
    variants = {**VARIANTS, **({"step-layers": LAYERS} if lm == "opt" else {})}
    regions, results, built = {}, {}, {}
    for variant, options in variants.items():
        for n in (NEW_TOKENS, 1):
            for name, (m, t) in {"full": (None, None), **methods}.items():
                key = f"{variant}/{name}/{n}"
                regions[key] = _decode(bb, m, inputs, t, n, options)
                start = time.perf_counter()
                results[key] = regions[key]()  # the first call builds, compiles and captures
                built[key] = time.perf_counter() - start
    regions["eager/full/32"] = lambda: generate(bb, **inputs, max_new_tokens=NEW_TOKENS)
    decoder = graph_decoder(bb, None, "full", None, inputs["input_ids"], NEW_TOKENS, 1, **VARIANTS["step"])
    regions["prefix"] = lambda: decoder.prefix(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    for name in methods:  # the two variants replay the same kernels: the same tokens and exits
        a, b = results[f"segments/{name}/{NEW_TOKENS}"], results[f"step/{name}/{NEW_TOKENS}"]
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["exit_layers"], b["exit_layers"]), name
    kw = dict(warmup=2, repeats=5, device="cuda", dtype=torch.bfloat16, batch_size=1)
    med = _timed(regions, **kw)
    points = []
    for variant in variants:
        full_n, full_1 = med[f"{variant}/full/{NEW_TOKENS}"], med[f"{variant}/full/1"]
        points.append({"lm": lm, "variant": variant, "method": "full", "build_s": built[f"{variant}/full/{NEW_TOKENS}"],
                       "ms_per_token_full": (full_n - full_1) / (NEW_TOKENS - 1), "ms_decode_full": full_n})  # fmt: skip
        for name, (_, t) in methods.items():
            m_n, m_1 = med[f"{variant}/{name}/{NEW_TOKENS}"], med[f"{variant}/{name}/1"]
            r_n, r_1 = results[f"{variant}/{name}/{NEW_TOKENS}"], results[f"{variant}/{name}/1"]
            expected_decode = (r_n["full_cost_layers"] - r_1["full_cost_layers"]) / (r_n["cost_layers"] - r_1["cost_layers"])
            expected = r_n["full_cost_layers"] / r_n["cost_layers"]
            prefix = med["prefix"]
            with_prefix = full_n / (prefix + (full_n - prefix) / expected)
            points.append({
                "lm": lm, "variant": variant, "method": name, "threshold": t, "build_s": built[f"{variant}/{name}/{NEW_TOKENS}"],
                "mean_exit_layer": float(r_n["exit_layers"].float().mean()),
                "decode_measured_speedup": (full_n - full_1) / (m_n - m_1), "decode_expected_speedup": expected_decode,
                "decode_measured_over_expected": (full_n - full_1) / (m_n - m_1) / expected_decode,
                "measured_speedup": full_n / m_n, "expected_with_prefix": with_prefix,
                "measured_over_expected_with_prefix": full_n / m_n / with_prefix, "prefix_ms": prefix,
            })  # fmt: skip
    points.append({"lm": lm, "variant": "eager", "method": "full", "ms_decode_full": med["eager/full/32"]})
    benchmark.pedantic(regions[f"step/deebert/{NEW_TOKENS}"], rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update({"model": f"gpu profile {lm} shape, random weights", "new_tokens": NEW_TOKENS,
                                 "steps": points,
                                 "machine": machine_state(time_region(regions["prefix"], **{**kw, "repeats": 1}))})  # fmt: skip
    for p in points:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()})


@gpu
@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_batches_against_their_own_expectation(benchmark, lm: str) -> None:
    bb = _backbone(lm)
    exits = parse_placement(SPARSE, bb.num_layers)
    deebert = get_method("deebert")(bb, exits).eval()
    options = VARIANTS["step"]
    kw = dict(warmup=2, repeats=5, device="cuda", dtype=torch.bfloat16)
    points = []
    for b in BATCHES:
        inputs = _inputs(bb, b, seed=b)
        t = _mixed(bb, deebert, inputs)
        regions = {"full": _decode(bb, None, inputs, None, NEW_TOKENS, options, rows=b),
                   "full_1": _decode(bb, None, inputs, None, 1, options, rows=b)}  # fmt: skip
        for compact in (True, False):
            regions[f"deebert/{compact}"] = _decode(bb, deebert, inputs, t, NEW_TOKENS, options, rows=b, compact=compact)
        results = {k: fn() for k, fn in regions.items()}
        regions["eager_full"] = lambda inputs=inputs: generate(bb, **inputs, max_new_tokens=NEW_TOKENS)
        med = _timed(regions, **{**kw, "batch_size": b})
        for compact in (True, False):
            r = results[f"deebert/{compact}"]
            measured = med["full"] / med[f"deebert/{compact}"]
            batch_expected = r["batch_full_cost_layers"] / r["batch_cost_layers"]
            points.append({
                "lm": lm, "batch": b, "compact": compact, "threshold": t,
                "ms_per_token_full": (med["full"] - med["full_1"]) / (NEW_TOKENS - 1),
                "ms_decode_full": med["full"], "ms_decode_full_eager": med["eager_full"],
                "measured_speedup": measured, "expected_batch_speedup": batch_expected,
                "expected_speedup": r["full_cost_layers"] / r["cost_layers"],
                "measured_over_batch_expected": measured / batch_expected,
            })  # fmt: skip
    benchmark.pedantic(regions["full"], rounds=1, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update({"model": f"gpu profile {lm} shape, random weights", "batches": points})
    for p in points:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()})


@gpu
def test_decoupled_rows_against_rows_riding_along(benchmark) -> None:
    bb = _backbone("opt")
    deebert = get_method("deebert")(bb, parse_placement(SPARSE, bb.num_layers)).eval()
    points = []
    for b in BATCHES[1:]:
        inputs = _inputs(bb, b, seed=b)
        t = _mixed(bb, deebert, inputs)
        decoder = graph_decoder(bb, deebert, "propagate", t, inputs["input_ids"], NEW_TOKENS, b, **VARIANTS["step"])
        args = (inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        out = decoder.decode(*args, max_new_tokens=NEW_TOKENS, threshold=t, eos_ids=[])
        ends = [end for _, end in decoder.bounds]
        # the token steps' exits (the first token comes from the prompt pass, which no schedule changes)
        depths = [[ends.index(k) for k in row[1:]] for row in out["exit_layers"].tolist()]
        last = len(ends) - 1
        schedules = {"riding": riding_ticks(depths, last), "decoupled": decoupled_ticks(depths, last)}
        decoder.start(*args, max_new_tokens=NEW_TOKENS, threshold=t)
        regions = {k: (lambda ticks=v, d=decoder: replay_ticks(d, ticks)) for k, v in schedules.items()}
        for fn in regions.values():
            fn()  # captures the segments and fills on first use
        med = _timed(regions, warmup=2, repeats=5, device="cuda", dtype=torch.bfloat16, batch_size=b)
        points.append({
            "batch": b, "threshold": t, "mean_exit_layer": float(out["exit_layers"].float().mean()),
            **{f"{k}_ms": med[k] for k in schedules}, **{f"{k}_ticks": len(v) for k, v in schedules.items()},
            **{f"{k}_layers": layer_count(v, decoder) for k, v in schedules.items()},
            "decoupled_over_riding": med["decoupled"] / med["riding"],
        })  # fmt: skip
    benchmark.pedantic(regions["riding"], rounds=1, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update({"model": "gpu profile opt shape, random weights", "decoupled": points})
    for p in points:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()})
