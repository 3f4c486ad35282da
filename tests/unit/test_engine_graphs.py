"""The graphs engine's fixed-shape decode, uncaptured on CPU: the eager engine's tokens, exits and costs.

Capture itself needs CUDA (tests/gpu/test_graphs.py replays the captured graphs against this path).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
import torch
from test_engine_exits import _method  # same folder: exits nudged off their init, as the eager tests use

from free_bench.core.errors import FreeBenchError
from free_bench.engine import generate
from free_bench.engine.generate import special_tokens
from free_bench.engine.graphs import conditional as cond
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.methods import ExitMethod
from free_bench.models import Backbone, from_hf, runner
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")
N_NEW = 8
METHODS = ("free", "deebert", "pabee", "distill", "static", "mue")
NEVER = {"max_prob": 1.0, "entropy": 0.0, "patience": 9, "cosine": 1.0}


@pytest.fixture(scope="module")
def bb() -> Backbone:
    backbone = from_hf(build_tiny_blip2("opt", seed=2))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _decode(decoder: GraphDecoder, inputs: dict, threshold: float | None) -> dict:
    eos, _ = special_tokens(decoder.bb)
    return decoder.decode(
        inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
        max_new_tokens=N_NEW, threshold=threshold, eos_ids=eos,
    )  # fmt: skip


def _thresholds(bb: Backbone, m: ExitMethod, inputs: dict) -> list[float]:
    """Thresholds that split tokens between exits: quantiles of the scores the eager engine saw."""
    if m.rule == "static":
        return [float(k) for k in m.layers if k < bb.num_layers]
    if m.rule == "patience":
        return [1.0, 2.0]
    scores = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule]).confidences
    return torch.quantile(scores.flatten().float(), torch.tensor([0.25, 0.5, 0.75])).tolist()


@pytest.mark.parametrize("policy, fuse, conditional", [("propagate", False, False), ("full", False, False),
                                                      ("propagate", True, False), ("propagate", False, True),
                                                      ("full", True, True)])  # fmt: skip
def test_same_tokens_exits_and_costs_as_the_eager_engine(bb: Backbone, policy: str, fuse: bool,
                                                          conditional: bool) -> None:  # fmt: skip
    """Every method at thresholds that spread tokens over the exits; `fuse` runs the layers as
    runner_fused.FusedOPT (q/k/v in one product), which must not change a token either; `conditional`
    runs each step as one function (segments and fills under IFs, decided here on the host)."""
    inputs = tiny_inputs(bb.model, 1, seed=5)
    full = generate(bb, **inputs, max_new_tokens=N_NEW)
    hf = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)[:, inputs["input_ids"].shape[1] :]
    plain = _decode(GraphDecoder(bb, None, kv_policy="full", capture=False, fuse=fuse, conditional=conditional),
                    inputs, None)  # fmt: skip
    assert torch.equal(plain["tokens"], hf) and torch.equal(plain["tokens"], full.tokens)
    seen_layers = set()
    for name in METHODS:
        m = _method(bb, name)
        last = [float(bb.num_layers)] if m.rule == "static" else []  # a static exit at L is the full model
        for t in _thresholds(bb, m, inputs) + last + ([NEVER[m.rule]] if m.rule in NEVER else []):
            static = int(t) if m.rule == "static" else None
            decoder = GraphDecoder(bb, m, kv_policy=policy, capture=False, static_layer=static, fuse=fuse,
                                   conditional=conditional)  # fmt: skip
            got = _decode(decoder, inputs, t)
            want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy)
            assert torch.equal(got["tokens"], want.tokens), (name, t)
            assert torch.equal(got["exit_layers"], want.exit_layers), (name, t)
            assert got["cost_layers"] == pytest.approx(want.cost_layers), (name, t)
            assert torch.allclose(got["confidences"], want.confidences, atol=1e-5, equal_nan=True), (name, t)
            seen_layers |= set(want.exit_layers.flatten().tolist())
            if t == NEVER.get(m.rule) or (m.rule == "static" and t == bb.num_layers):
                assert torch.equal(got["tokens"], hf), name  # a threshold that never exits: HF's tokens
    assert len(seen_layers) >= 3  # the thresholds really spread tokens over exits


def test_a_decoder_reused_across_prompts_forgets_the_last_one(bb: Backbone) -> None:
    """The fixed KV buffers keep the previous prompt's entries: masks must hide them."""
    m = _method(bb, "free")
    decoder = GraphDecoder(bb, m, kv_policy="propagate", capture=False)
    long_prompt = tiny_inputs(bb.model, 1, text_len=9, seed=1)
    short_prompt = tiny_inputs(bb.model, 1, text_len=3, seed=3)
    _decode(decoder, long_prompt, 0.5)
    again = _decode(decoder, short_prompt, 0.5)
    fresh = _decode(GraphDecoder(bb, m, kv_policy="propagate", capture=False), short_prompt, 0.5)
    assert torch.equal(again["tokens"], fresh["tokens"])
    assert torch.equal(again["exit_layers"], fresh["exit_layers"])


def test_one_pass_per_prompt_length_reused_and_the_prefix_is_the_runners(bb: Backbone) -> None:
    """Prompts get a pass per length (captured once on CUDA), reused by later prompts of that length;
    the decoder's prefix (its image side replayed from a buffer) is `runner.prefix`'s."""
    m = _method(bb, "deebert")
    decoder = GraphDecoder(bb, m, kv_policy="propagate", capture=False)
    a, b, c = (tiny_inputs(bb.model, 1, text_len=n, seed=s) for n, s in ((4, 1), (7, 2), (4, 3)))
    for inputs in (a, b):
        _decode(decoder, inputs, 0.5)
    kept = dict(decoder.prompts)
    got = _decode(decoder, c, 0.5)
    assert sorted(kept) == sorted(decoder.prompts) and len(kept) == 2
    assert all(decoder.prompts[n] is kept[n] for n in kept)
    want = generate(bb, m, **c, max_new_tokens=N_NEW, threshold=0.5)
    assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)
    for inputs in (a, b):
        mine = decoder.prefix(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"))
        theirs = runner.prefix(bb, inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"))
        assert all(torch.equal(x, y) for x, y in zip(mine, theirs, strict=True))


def test_eos_stops_the_row_as_in_the_eager_engine() -> None:
    backbone = from_hf(build_tiny_blip2("opt", seed=2))
    inputs = tiny_inputs(backbone.model, 1, seed=5)
    full = generate(backbone, **inputs, max_new_tokens=N_NEW).tokens[0]
    eos = int(full[2])  # the row's third token ends it
    backbone.language_model.generation_config.eos_token_id = eos
    want = generate(backbone, **inputs, max_new_tokens=N_NEW)
    got = _decode(GraphDecoder(backbone, None, capture=False), inputs, None)
    assert got["tokens"].shape[1] <= 3
    assert torch.equal(got["tokens"], want.tokens)


def test_what_the_graphs_engine_refuses(bb: Backbone) -> None:
    m = _method(bb, "free")
    with pytest.raises(FreeBenchError, match="CUDA"):
        generate(bb, m, **tiny_inputs(bb.model, 1, seed=5), threshold=0.5, engine="graphs")
    with pytest.raises(FreeBenchError, match="engine"):
        generate(bb, m, **tiny_inputs(bb.model, 1, seed=5), threshold=0.5, engine="compiled")
    with pytest.raises(FreeBenchError, match="deferred"):
        GraphDecoder(bb, m, kv_policy="deferred", capture=False)
    with pytest.raises(FreeBenchError, match="holds 1 row"):  # batches go to bucket decoders (generate)
        _decode(GraphDecoder(bb, m, capture=False), tiny_inputs(bb.model, 2, seed=5), 0.5)
    with pytest.raises(FreeBenchError, match="capacity"):
        _decode(GraphDecoder(bb, m, capacity=12, capture=False), tiny_inputs(bb.model, 1, seed=5), 0.5)
    with pytest.raises(FreeBenchError, match="CUDA device"):
        GraphDecoder(bb, m, capture=True)
    with pytest.raises(FreeBenchError, match="static_layer"):
        GraphDecoder(bb, _method(bb, "static"), capture=False)
    t5 = from_hf(build_tiny_blip2("t5", seed=2))
    with pytest.raises(FreeBenchError, match="cross_capacity"):  # the encoder slots it holds
        GraphDecoder(t5, None, capture=False)
    with pytest.raises(FreeBenchError, match="OPT"):  # q/k/v fused as one product: OPT's layers
        GraphDecoder(t5, None, capture=False, fuse=True, cross_capacity=32)


@pytest.mark.parametrize(
    "option, mode", [(True, None), ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")]
)
def test_compile_segments_passes_its_mode(bb: Backbone, monkeypatch, option, mode) -> None:
    """`compile_segments=True` compiles with inductor's default mode, a string names the mode."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    decoder = GraphDecoder(bb, _method(bb, "deebert"), capture=False, compile_segments=option)
    assert seen == [{"dynamic": False, "mode": mode}] * len(decoder.step.segments) and seen


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor on CPU needs a C++ compiler"
)
@pytest.mark.parametrize("name, fuse", [("pabee", False), ("pabee", True), ("free", True)])
def test_compiled_segments_decode_as_the_eager_engine(bb: Backbone, name: str, fuse: bool) -> None:
    """`compile_segments` hands each segment to torch.compile (what the graphs engine runs on CUDA):
    same tokens and exits, and no recompiling once every segment has run; with the fused layers too.
    PABEE's patience carries state from segment to segment, FREE's generator layers their own K/V."""
    from torch._dynamo.utils import counters

    m = _method(bb, name)
    decoder = GraphDecoder(bb, m, kv_policy="propagate", capture=False, compile_segments=True, fuse=fuse)
    seen = []
    for seed, text_len in ((5, 4), (1, 9), (3, 3)):
        inputs = tiny_inputs(bb.model, 1, seed=seed, text_len=text_len)
        t = 1.0 if m.rule == "patience" else 0.5
        got = _decode(decoder, inputs, t)
        want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t)
        assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)
        seen.append(counters["stats"]["unique_graphs"])
    assert seen[1] == seen[2]  # prompts of another length reuse the compiled segments


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor on CPU needs a C++ compiler"
)
def test_every_decoders_segments_compile_past_dynamos_limit(bb: Backbone) -> None:
    """All segments share one code object, so dynamo's per-code limit on compiled entries (8 by default,
    1 here) would leave later decoders' segments running eager code without a word (here, with
    `fail_on_recompile_limit_hit`, with an error): three methods' decoders from an empty cache need
    more than one entry, and each decodes as the eager engine."""
    import torch._dynamo

    torch._dynamo.reset()  # entries left by earlier tests would be reused, not recompiled
    inputs = tiny_inputs(bb.model, 1, seed=6, text_len=4)
    for name in ("deebert", "free", "pabee"):  # thresholds that never exit: every segment runs
        m = _method(bb, name)
        t = NEVER[m.rule]
        with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
            got = _decode(GraphDecoder(bb, m, capture=False, compile_segments=True), inputs, t)
        want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t)
        assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor on CPU needs a C++ compiler"
)
@pytest.mark.parametrize("fuse", [False, True])
def test_compiled_segments_write_kv_in_place(bb: Backbone, fuse: bool) -> None:
    """Inductor's code allocates no buffer of a layer's K/V shape, or of the stack's: each layer's write
    goes into its own buffer in place. With the stacked layout (writes into views of one input) it
    allocated copies of both, ten copies of the 21 MB stack per token on the H200 (StaticKV)."""
    from torch._inductor.utils import run_and_get_code

    decoder = GraphDecoder(bb, None, kv_policy="full", capture=False, compile_segments=True, fuse=fuse)
    inputs = tiny_inputs(bb.model, 1, seed=5, text_len=4)
    _, codes = run_and_get_code(lambda: _decode(decoder, inputs, None))
    b, h, c, d = decoder.kv.keys[0].shape  # one layer's (B, H, C, Dh)
    shapes = {f"(({b}, {h}, {c}, {d})", f"(({bb.num_layers}, {b}, {h}, {c}, {d})"}
    allocations = [line for code in codes for line in code.splitlines() if "empty_strided" in line]
    assert allocations, "no compiled code seen"
    assert not [a for a in allocations if any(s in a for s in shapes)]


def test_no_garbage_collection_inside_a_capture(monkeypatch) -> None:
    """`graphs_capture.capture` pauses Python's collector while a stream captures (a finalizer of a
    dead decoder's graph must not run then), only then, and restores it after, also on an error.
    CUDA's stream and graph objects are stood in for: what is checked is the order of the calls."""
    import contextlib
    import gc

    from free_bench.engine.graphs import capture as G

    class Fake:
        def __init__(self, *a, **k) -> None: ...
        def wait_stream(self, other) -> None: ...

    seen: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def graph(g, capture_error_mode: str = "global"):
        assert capture_error_mode == "thread_local"  # another thread's CUDA call must not void it
        seen.append(("begin", gc.isenabled()))
        yield

    for name, value in {"Stream": Fake, "CUDAGraph": Fake, "current_stream": Fake, "graph": graph,
                        "stream": lambda s: contextlib.nullcontext(), "synchronize": lambda: None}.items():  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, value)
    assert gc.isenabled()
    G.capture([G.Graphed(lambda: seen.append(("run", gc.isenabled())))], warmups=1)
    assert seen == [("run", True), ("begin", False), ("run", False)] and gc.isenabled()

    def boom() -> None:
        raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError, match="capture failed"):
        G.capture([G.Graphed(boom)], warmups=0)
    assert gc.isenabled()


def test_segments_of_equal_length_trace_to_one_graph(bb: Backbone, monkeypatch) -> None:
    """Middle segments (layers k..k+n, then exit k+n's check) differ only in their weights and buffers,
    which dynamo passes in: their graphs' code must be equal, so inductor compiles one for all. A segment's
    exit layer written as a constant made each its own graph (on CPU, FREE's first decode compiled 6
    graphs instead of 3, in twice the time)."""
    import torch._dynamo

    codes: list[str] = []

    def record(gm: torch.fx.GraphModule, example_inputs) -> Callable:
        """The graph with its inputs' names left out (they name the layer a weight belongs to)."""
        names = {n: f"v{i}" for i, n in enumerate(gm.graph.nodes)}
        rename = lambda a: names[a]  # noqa: E731
        codes.append("\n".join(
            f"{n.op} {'' if n.op == 'placeholder' else n.target} "
            f"{torch.fx.node.map_arg(n.args, rename)} {torch.fx.node.map_arg(n.kwargs, rename)}"
            for n in gm.graph.nodes
        ))  # fmt: skip
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=record, dynamic=False))
    torch._dynamo.reset()
    m = _method(bb, "deebert")  # exits after layers 1, 2, 3 of 4: segments 0-1, 1-2, 2-3, 3-4
    decoder = GraphDecoder(bb, m, capture=False, compile_segments=True, fuse=True)
    inputs = tiny_inputs(bb.model, 1, seed=6, text_len=4)
    got = _decode(decoder, inputs, NEVER[m.rule])
    assert len(codes) == len(decoder.bounds) == 4
    assert codes[1] == codes[2] and codes[0] != codes[1] != codes[3]
    want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule])
    assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor on CPU needs a C++ compiler"
)
def test_compiled_layers_decode_as_the_eager_engine_and_compile_once(bb: Backbone, monkeypatch) -> None:
    """`compile_layers`: the token step's layers run one compiled `runner_fused.fused_layer` for every
    layer, segment and decoder. Every method's tokens and exits equal the eager engine's, and dynamo
    traces one graph for all of them, where `compile_segments` traces every segment of every decoder."""
    import free_bench.engine.graphs.compiling as G

    traced: list[int] = []

    def count(gm, example_inputs):
        traced.append(1)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=count, dynamic=False))
    monkeypatch.setattr(G, "SHARED_LAYERS", {})
    torch._dynamo.reset()
    inputs = tiny_inputs(bb.model, 1, seed=6, text_len=4)
    for name in ("deebert", "free", "pabee", "static"):
        m = _method(bb, name)
        t = _thresholds(bb, m, inputs)[0]
        static = int(t) if m.rule == "static" else None
        decoder = GraphDecoder(bb, m, capture=False, fuse=True, compile_layers=True, static_layer=static)
        got = _decode(decoder, inputs, t)
        want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t)
        assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)
    full = _decode(GraphDecoder(bb, None, kv_policy="full", capture=False, fuse=True, compile_layers=True),
                   inputs, None)  # fmt: skip
    assert torch.equal(full["tokens"], generate(bb, None, **inputs, max_new_tokens=N_NEW).tokens)
    # one layer function and one shape, traced twice for all five decoders: the first layer's input is
    # made under inference mode, the segment buffers outside it, and dynamo guards on that difference
    assert len(traced) == 2


def test_compile_layers_needs_the_fused_layers(bb: Backbone) -> None:
    with pytest.raises(FreeBenchError, match="fuse=True"):
        GraphDecoder(bb, None, kv_policy="full", capture=False, compile_layers=True)
    with pytest.raises(FreeBenchError, match="replaces"):
        GraphDecoder(bb, None, kv_policy="full", capture=False, fuse=True, compile_layers=True,
                     compile_segments=True)  # fmt: skip


def test_when_runs_its_body_as_the_predicate_says_or_always_when_warming() -> None:
    ran: list[str] = []
    for pred, always in ((True, False), (False, False), (False, True)):
        cond.when(torch.tensor(pred), lambda p=pred, a=always: ran.append(f"{p}-{a}"), always=always)
    assert ran == ["True-False", "False-True"]


def record_calls(decoder: GraphDecoder, log: list[str], segment: str = "segment ", fill: str = "fill ") -> None:
    """Wrap the token step's segments and fills so that each call appends `<segment><i>` / `<fill><k>` to `log`."""
    for i, seg in enumerate(decoder.step.segments):
        seg.run = (lambda f, tag: lambda: (log.append(tag), f())[1])(seg.run, f"{segment}{i}")
    for k, part in decoder.step.fills.items():
        part.run = (lambda f, tag: lambda: (log.append(tag), f())[1])(part.run, f"{fill}{k}")


def test_one_graph_per_step_enters_only_the_segments_and_fills_a_row_needs(bb: Backbone) -> None:
    """The step as one function: segment i + 1 runs only while a row is undecided, a fill only where a
    row left; every token leaving at the first exit runs segment 0 and that exit's fill, a threshold
    that never fires runs every segment and no fill."""
    m = _method(bb, "deebert")
    decoder = GraphDecoder(bb, m, capture=False, conditional=True)
    ran: list[str] = []
    record_calls(decoder, ran)
    inputs = tiny_inputs(bb.model, 1, seed=5)
    first = m.layers[0]
    _decode(decoder, inputs, 1e9)  # entropy below 1e9: every token leaves at the first exit
    steps = N_NEW - 1  # the prompt is a pass of its own
    assert ran == ["segment 0", f"fill {first}"] * steps
    ran.clear()
    _decode(decoder, inputs, 0.0)  # never fires
    assert ran == [f"segment {i}" for i in range(len(decoder.bounds))] * steps


def test_a_step_that_fails_to_capture_as_one_graph_is_captured_per_segment(bb: Backbone, monkeypatch) -> None:
    """If a torch build's conditional capture fails, the decoder says so (logged, and recorded for the
    sweep's manifest) and captures each segment and fill instead; the decode is unchanged."""
    import free_bench.engine.graphs.decoder as G

    captured: list[str] = []

    def fake_capture(parts, warmups: int = 2) -> None:  # no CUDA here: record what would be captured
        if any(part is decoder.step.whole or any(part is p.whole for p in decoder.prompts.values()) for part in parts):
            raise RuntimeError("operation not permitted when stream is capturing")
        captured.extend("part" for _ in parts)

    monkeypatch.setattr(G, "capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(cond, "REFUSED", [])
    m = _method(bb, "deebert")
    decoder = GraphDecoder(bb, m, capture=False, conditional=True)
    decoder.capture = True  # capture as on CUDA, through the fake
    inputs = tiny_inputs(bb.model, 1, seed=5)
    got = _decode(decoder, inputs, 0.5)
    want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=0.5)
    assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)
    assert not decoder.conditional and decoder.step_mode == "one graph per segment" and captured
    assert len(cond.REFUSED) == 1 and cond.graph_step_mode().startswith("one graph per segment (one graph per step")
