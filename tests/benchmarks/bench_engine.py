"""Early-exit decoding on the clock: does skipping layers save what the layer count says, and what
does one exit check cost? Random weights (nothing downloaded), EOS off, `NEW_TOKENS` tokens.

- static exit at the middle layer (every token leaves there, whatever the weights): measured speedup
  over the full model through the same engine, next to the expected one (layer-equivalents);
- three DeeBERT-style checks that never fire: the time per check per token (head + rule + host sync).

On CUDA: BLIP-2 OPT-2.7b's LM shape in bf16. On CPU (timer=cpu_wall): 32 layers of width 64, where
the arithmetic is negligible and the time is Python and dispatch.

`extra_info` carries what `free-bench regress` compares: `measured_speedup`, `expected_speedup`,
`mean_exit_layer` and the machine state (`machine`: device, timer, dtype, batch size, torch version,
threads, host). No `quality` / `quality_metric`: the weights are random, so there is none to report.
"""

from __future__ import annotations

import pytest
import torch
from bench_runner import NEW_TOKENS, OPT_2_7B  # same folder (tests/benchmarks is no package)

from free_bench.core.records import device_name
from free_bench.engine import generate, time_region
from free_bench.engine.generate import special_tokens
from free_bench.engine.graphs.conditional import graph_step_mode
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.engine.timing import Timing
from free_bench.methods import get_method
from free_bench.models import from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

_SHAPES = {
    "cuda": ("random-init OPT-2.7b LM shape", torch.bfloat16, OPT_2_7B),
    "cpu": ("OPT 32 layers x width 64 (host overhead)", torch.float32,
            dict(num_hidden_layers=32, hidden_size=64, word_embed_proj_dim=64, ffn_dim=256, num_attention_heads=4)),
}  # fmt: skip
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def machine_state(timing: Timing) -> dict:
    """The conditions a timing was taken under (from its record), plus torch threads and the host."""
    record = timing.as_record()
    state = {k: record[k] for k in ("device_name", "timer", "dtype", "batch_size", "torch_version")}
    return {**state, "torch_threads": torch.get_num_threads(), "host": device_name()}


@pytest.mark.parametrize("policy", ["propagate", "deferred"])
@pytest.mark.parametrize("device", DEVICES)
def test_static_exit_saves_what_it_skips(benchmark, device: str, policy: str) -> None:
    name, dtype, shape = _SHAPES[device]
    if device == "cpu":
        torch.set_num_threads(1)
    bb = from_hf(build_tiny_blip2("opt", 0, device=device, dtype=dtype, **shape))
    bb.language_model.generation_config.eos_token_id = bb.lm_config.eos_token_id = None
    inputs = {k: v.to(device) for k, v in tiny_inputs(bb.model, 1, text_len=8, seed=0).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    half = bb.num_layers // 2
    static = get_method("static")(bb, [half // 2, half, bb.num_layers - half // 2]).eval()
    never = get_method("deebert")(bb, [half // 2, half, bb.num_layers - half // 2]).eval()
    kw = dict(warmup=2, repeats=5, device=device, dtype=dtype, batch_size=1)

    def full() -> object:
        return generate(bb, **inputs, max_new_tokens=NEW_TOKENS)

    def early() -> object:
        return generate(bb, static, **inputs, max_new_tokens=NEW_TOKENS, threshold=half, kv_policy=policy)

    def checked() -> object:
        return generate(bb, never, **inputs, max_new_tokens=NEW_TOKENS, threshold=0.0, kv_policy=policy)

    result = early()
    assert bool((result.exit_layers == half).all())
    rounds = [
        (time_region(full, **kw), time_region(early, **kw), time_region(checked, **kw)) for _ in range(3)
    ]
    benchmark.pedantic(early, rounds=3, warmup_rounds=1, iterations=1)
    med = [torch.tensor([t for r in rounds for t in r[i].samples_ms]).median().item() for i in range(3)]
    benchmark.extra_info.update(
        {
            "model": name,
            "policy": policy,
            "new_tokens": NEW_TOKENS,
            "exit_layer": half,
            "mean_exit_layer": result.exit_layers.float().mean().item(),
            "num_layers": bb.num_layers,
            "measured_speedup": med[0] / med[1],
            "expected_speedup": result.expected_speedup,
            "measured_over_expected": med[0] / med[1] / result.expected_speedup,
            "ms_per_token_full": med[0] / NEW_TOKENS,
            "ms_per_token_static_exit": med[1] / NEW_TOKENS,
            "ms_per_exit_check": (med[2] - med[0]) / NEW_TOKENS / 3,
            "timing_full": rounds[0][0].as_record(),
            "machine": machine_state(rounds[0][1]),
        }
    )


def _weight_floor_ms(bb, device: str) -> tuple[float, float]:
    """(bytes of the LM's weights read per token, the ms that takes at a copy's measured bandwidth):
    batch-1 decoding reads every weight once per token, so no engine beats this."""
    lm = [bb.lm_head.weight] + [p for layer in bb.layers for p in layer.parameters()]
    weight_bytes = float(sum(p.numel() * p.element_size() for p in lm))
    buf = torch.empty(int(1 << 30), dtype=torch.uint8, device=device)
    copy = time_region(lambda: buf.clone(), warmup=3, repeats=10, device=device)
    bandwidth = 2 * buf.numel() / (copy.median_ms / 1e3)  # bytes/s: read + write
    return weight_bytes, weight_bytes / bandwidth * 1e3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")
def test_graphs_engine_near_the_floor(benchmark) -> None:
    """Full-depth decoding through the graphs engine (`engine="graphs"`: fused layers compiled by
    inductor, then captured, one graph per step where torch captures conditional nodes) against the
    weight-read floor, one exit check's cost, and a static exit's measured speedup, with HF's static-cache
    generate (transformers compiles its forward: what a user would pick instead) timed in the same run,
    and a kernel profile of the engine's full decode. Per-token times are (32 tokens - 1 token) / 31: the
    prefix and prompt pass drop out. The eager engine and the captured HF layers: `-k fused`."""
    graphs_near_the_floor(benchmark, "cuda", *_SHAPES["cuda"], engines=("graphs", "hf-static"), profile=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")
def test_compiled_graphs_near_the_floor(benchmark) -> None:
    """An ablation: the HF layers compiled by inductor before capture (`GraphDecoder(compile_segments=
    True)`, no fusing), timed interleaved with the captured HF layers."""
    graphs_near_the_floor(benchmark, "cuda", *_SHAPES["cuda"], engines=("compiled", "graphs-plain"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")
def test_fused_graphs_near_the_floor(benchmark) -> None:
    """An ablation: runner_fused's layers (q/k/v as one product: `GraphDecoder(fuse=True)`) captured
    without inductor, timed interleaved with the graphs engine (fused and compiled) and the captured HF
    layers. Until commit b33db10 this benchmark's first engine was the fused and compiled one."""
    graphs_near_the_floor(benchmark, "cuda", *_SHAPES["cuda"], engines=("fused", "graphs", "graphs-plain"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")
def test_layer_compiled_graphs_near_the_floor(benchmark) -> None:
    """A candidate: one compiled fused-layer function shared by every layer and decoder
    (`GraphDecoder(fuse=True, compile_layers=True)`: compiled once per process and shape, where the
    graphs engine compiles every segment of every decoder), timed interleaved with the graphs engine
    and the captured HF layers. On CPU, five decoders' first decodes took 12.7 s against 41.6 s."""
    graphs_near_the_floor(benchmark, "cuda", *_SHAPES["cuda"], engines=("layers", "graphs", "graphs-plain"))


# variants of the graphs engine the benchmarks time (GraphDecoder options); "graphs" itself is
# `generate(engine="graphs")` (generate.GRAPHS_ENGINE: fused and compiled), "graphs-plain" the captured
# HF layers it ran until commit b33db10
VARIANTS = {
    "graphs-plain": {},
    "compiled": {"compile_segments": True},
    "fused": {"fuse": True},
    "layers": {"fuse": True, "compile_layers": True},
    "tuned": {"fuse": True, "compile_segments": True, "tune": True},
    "tuned-layers": {"fuse": True, "compile_layers": True, "tune": True},
}
# references a user would pick instead, timed beside the engines (full-depth regions only)
REFERENCES = ("hf-static",)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphs engine captures CUDA graphs")
def test_tuned_graphs_near_the_floor(benchmark) -> None:
    """A candidate: inductor's coordinate-descent tuning, under which one-row matrix products become
    tuned reductions (`GraphDecoder(tune=True)`, gpt-fast's batch-1 setting), with one compiled layer
    function for every layer; timed interleaved with the same untuned and HF's static-cache generate
    (transformers compiles its forward), with a kernel profile of each graphs variant's full decode."""
    graphs_near_the_floor(benchmark, "cuda", *_SHAPES["cuda"],
                          engines=("tuned-layers", "layers", "hf-static"), profile=True)  # fmt: skip


def kernel_profile(fn, repeats: int = 3, top: int = 12) -> list[dict]:
    """Where a region's GPU time goes: the `top` kernels by device time per call (CUDA graphs'
    kernels included), each with its share of the call's kernel time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.device_time_total, reverse=True)[:top]
    return [{"kernel": e.key[:120], "ms_per_call": e.device_time_total / 1e3 / repeats, "calls": e.count / repeats,
             "share": e.device_time_total / total} for e in ranked]  # fmt: skip


def graphs_near_the_floor(
    benchmark, device: str, name: str, dtype: torch.dtype, shape: dict, engines: tuple[str, ...],
    profile: bool = False,
) -> None:
    """The body of the benchmarks above: `engines[0]` is the one reported under the plain keys
    (`measured_speedup`, `ms_per_token_full`, ...), every other one under `<engine>_` keys."""
    bb = from_hf(build_tiny_blip2("opt", 0, device=device, dtype=dtype, **shape))
    bb.language_model.generation_config.eos_token_id = bb.lm_config.eos_token_id = None
    inputs = {k: v.to(device) for k, v in tiny_inputs(bb.model, 1, text_len=8, seed=0).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    half = bb.num_layers // 2
    exits = [half // 2, half, bb.num_layers - half // 2]
    static = get_method("static")(bb, exits).eval()
    never = get_method("deebert")(bb, exits).eval()
    kw = dict(warmup=3, repeats=10, device=device, dtype=dtype, batch_size=1)
    built: dict = {}  # the graphs engine's variants (VARIANTS), one decoder per method and threshold

    def run(engine: str, method=None, threshold=None, n: int = NEW_TOKENS):
        if engine == "hf-static":
            return lambda: bb.model.generate(**inputs, do_sample=False, max_new_tokens=n,
                                             cache_implementation="static")  # fmt: skip
        if engine not in VARIANTS:
            return lambda: generate(
                bb, method, **inputs, max_new_tokens=n, threshold=threshold, engine=engine
            )
        key = (engine, id(method), threshold)
        if key not in built:
            layer = int(threshold) if method is static else None
            built[key] = GraphDecoder(bb, method, kv_policy="propagate" if method is not None else "full",
                                      static_layer=layer, **VARIANTS[engine])  # fmt: skip
        eos, _ = special_tokens(bb)
        return lambda: built[key].decode(
            inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"), max_new_tokens=n,
            threshold=threshold, eos_ids=eos,
        )  # fmt: skip

    def tokens(engine: str) -> torch.Tensor:
        out = run(engine)()
        return out["tokens"] if isinstance(out, dict) else out.tokens

    regions = {}
    for e in engines:
        regions.update({f"{e}_full": run(e), f"{e}_full_1": run(e, n=1)})
        if e not in REFERENCES:
            regions.update({f"{e}_static": run(e, static, half), f"{e}_checked": run(e, never, 0.0)})
    if "eager" in engines:
        regions["hf"] = lambda: bb.model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    first = run(engines[0], static, half)()
    first_layers = first["exit_layers"] if isinstance(first, dict) else first.exit_layers
    assert bool((first_layers == half).all())
    reference = run("eager")().tokens  # the eager engine's full-depth tokens (HF's, as the tests check)
    # bf16 kernels that inductor fuses may round differently: agreement is reported, not assumed; the
    # captured HF layers run the eager engine's kernels and must agree
    agree = {e: float((tokens(e) == reference).float().mean()) for e in engines if e not in REFERENCES}
    assert agree.get("graphs-plain", 1.0) == 1.0
    samples: dict[str, list[float]] = {k: [] for k in regions}
    for _ in range(3):  # interleaved rounds: clock drift hits every region alike
        for key, fn in regions.items():
            samples[key] += list(time_region(fn, **kw).samples_ms)
    benchmark.pedantic(regions[f"{engines[0]}_static"], rounds=3, warmup_rounds=1, iterations=1)
    med = {k: torch.tensor(v).median().item() for k, v in samples.items()}
    weight_bytes, floor_ms = _weight_floor_ms(bb, device)
    # one exit check reads its own modules and the LM head (with the final norm): its floor
    check_params = [*never.exit_modules(exits[0]), bb.lm_head] + ([bb.final_norm] if bb.final_norm is not None else [])
    check_bytes = float(sum(p.numel() * p.element_size() for m in check_params for p in m.parameters()))
    check_floor_ms = floor_ms * check_bytes / weight_bytes
    expected = generate(bb, static, **inputs, max_new_tokens=NEW_TOKENS, threshold=half).expected_speedup
    info: dict = {
        "model": name,
        "engine": engines[0],
        "policy": "propagate",
        "new_tokens": NEW_TOKENS,
        "exit_layer": half,
        "mean_exit_layer": float(half),
        "num_layers": bb.num_layers,
        "expected_speedup": expected,
        "floor_ms_per_token": floor_ms,
        "weight_gib": weight_bytes / 2**30,
        "exit_check_floor_ms": check_floor_ms,
        "graph_step": graph_step_mode(),  # one graph per step, or per segment (and why)
    }
    for e in engines:
        per_token = (med[f"{e}_full"] - med[f"{e}_full_1"]) / (NEW_TOKENS - 1)
        tag = e.replace("-", "_")  # fused-compiled -> fused_compiled_ keys
        suffix = "" if e == engines[0] else f"_{tag}"
        prefix = "" if e == engines[0] else f"{tag}_"
        if e in REFERENCES:
            info.update({f"ms_per_token_full{suffix}": per_token, f"ms_per_decode_full{suffix}": med[f"{e}_full"],
                         f"full_over_floor{suffix}": per_token / floor_ms})  # fmt: skip
            continue
        if profile:
            info[f"profile{suffix}"] = kernel_profile(regions[f"{e}_full"])
        info.update(
            {
                f"{prefix}measured_speedup": med[f"{e}_full"] / med[f"{e}_static"],
                f"ms_per_token_full{suffix}": per_token,
                f"ms_per_decode_full{suffix}": med[f"{e}_full"],
                f"full_over_floor{suffix}": per_token / floor_ms,
                f"ms_per_exit_check{suffix}": (med[f"{e}_checked"] - med[f"{e}_full"])
                / NEW_TOKENS
                / len(exits),
                f"exit_check_over_floor{suffix}": (med[f"{e}_checked"] - med[f"{e}_full"]) / NEW_TOKENS
                / len(exits) / check_floor_ms,
            }
        )
        if e != "eager":
            info[f"tokens_agree_with_eager{suffix}"] = agree[e]
    if "hf" in med:
        info["ms_per_decode_hf"] = med["hf"]
    info["machine"] = {**machine_state(time_region(regions[f"{engines[0]}_full"], **{**kw, "repeats": 1})),
                       "engine": engines[0]}  # fmt: skip
    benchmark.extra_info.update(info)
