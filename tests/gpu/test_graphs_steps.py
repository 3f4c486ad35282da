"""Captured one-graph-per-step decoding (conditional nodes) and T5 on the graphs engine: the same tokens,
exits and costs as one graph per segment, the uncaptured path and the eager engine (tiny models, fp32,
no TF32)."""

from __future__ import annotations

import pytest
import torch

from free_bench.engine import generate
from free_bench.engine.generate import graph_decoder, special_tokens
from free_bench.engine.graphs import conditional as cond
from free_bench.methods import get_method
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

N_NEW = 8
NEVER = {"max_prob": 1.0, "entropy": 0.0, "patience": 9, "cosine": 1.0}
METHODS = ("free", "deebert", "pabee", "distill", "static", "mue")
needs_nodes = pytest.mark.skipif(not cond.supported(), reason="this torch build captures no conditional nodes")


def _backbone(lm: str) -> Backbone:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backbone = from_hf(build_tiny_blip2(lm, seed=2, device="cuda"))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _inputs(bb: Backbone, rows: int = 1, seed: int = 5) -> dict:
    return {k: v.cuda() for k, v in tiny_inputs(bb.model, rows, seed=seed).items()}


def _method(bb: Backbone, name: str):
    m = get_method(name)(bb, "all")
    gen = torch.Generator(device="cuda").manual_seed(7)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, device="cuda"))
    return m.eval()


def _thresholds(bb: Backbone, m, inputs: dict) -> list[float]:
    if m.rule == "static":
        return [float(k) for k in m.layers if k < bb.num_layers][:2]
    if m.rule == "patience":
        return [1.0, 2.0]
    seen = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule]).confidences
    return torch.quantile(seen[seen == seen].float(), torch.tensor([0.3, 0.6], device="cuda")).tolist()


def _decode(bb: Backbone, m, inputs: dict, t, policy: str = "propagate", **options) -> dict:
    """Captured without inductor (compiling every decoder of these loops would take minutes; the compiled
    path is checked in tests/gpu/test_graphs.py and below)."""
    eos, pad = special_tokens(bb)
    decoder = graph_decoder(bb, m, policy, t, inputs["input_ids"], N_NEW, compile_segments=False, **options)
    return decoder.decode(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                          max_new_tokens=N_NEW, threshold=t, eos_ids=eos, pad_id=pad)  # fmt: skip


@needs_nodes
@pytest.mark.parametrize("lm", ["opt", "t5"])
@pytest.mark.parametrize("policy", ["propagate", "full"])
def test_one_graph_per_step_decodes_as_one_per_segment_and_the_eager_engine(lm: str, policy: str) -> None:
    bb = _backbone(lm)
    inputs = _inputs(bb)
    for name in METHODS:
        m = _method(bb, name)
        for t in _thresholds(bb, m, inputs):
            step = _decode(bb, m, inputs, t, policy, conditional=True)
            segments = _decode(bb, m, inputs, t, policy, conditional=False)
            eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy)
            for got in (step, segments):
                assert torch.equal(got["tokens"], eager.tokens), (name, t)
                assert torch.equal(got["exit_layers"], eager.exit_layers), (name, t)
                assert got["cost_layers"] == pytest.approx(eager.cost_layers), (name, t)
    decoder = graph_decoder(bb, m, policy, t, inputs["input_ids"], N_NEW, compile_segments=False, conditional=True)
    assert decoder.conditional and decoder.step.whole is not None and decoder.step.whole.graph is not None
    # and compiled by inductor before capture, as generate(engine="graphs") runs it
    got = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy, engine="graphs")
    want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.exit_layers, want.exit_layers)


@pytest.mark.parametrize("compact", [True, False])
def test_t5_captured_buckets_and_speculative_decode_as_the_eager_engine(compact: bool, monkeypatch) -> None:
    """T5 through `generate(engine="graphs")` (its blocks captured without inductor here, to keep the
    many decoders quick): the full model is HF's; five rows of different prompts (EOS set to a token
    some rows emit early) in buckets, each row at its own exit; speculative decoding gives the full
    model's tokens."""
    import free_bench.engine.generate as engine

    monkeypatch.setattr(engine, "GRAPHS_ENGINE_T5", {})
    bb = _backbone("t5")
    one = _inputs(bb)
    hf = bb.model.generate(**one, do_sample=False, max_new_tokens=N_NEW)[:, 1:]
    assert torch.equal(generate(bb, **one, max_new_tokens=N_NEW, engine="graphs").tokens, hf)
    for name in ("free", "deebert", "static"):
        m = _method(bb, name)
        for t in _thresholds(bb, m, one):
            for k in (1, 4):
                got = generate(bb, m, **one, max_new_tokens=N_NEW, threshold=t, engine="graphs",
                               decode="speculative", draft_len=k)  # fmt: skip
                assert torch.equal(got.tokens, hf), (name, t, k)
    five = _inputs(bb, 5, seed=11)
    first = generate(bb, **five, max_new_tokens=N_NEW).tokens
    bb.language_model.generation_config.eos_token_id = int(torch.bincount(first[:, :3].flatten()).argmax())
    for name in ("free", "deebert", "pabee", "static"):
        m = _method(bb, name)
        for t in _thresholds(bb, m, five):
            got = generate(bb, m, **five, max_new_tokens=N_NEW, threshold=t, engine="graphs", compact=compact)
            want = generate(bb, m, **five, max_new_tokens=N_NEW, threshold=t)
            assert torch.equal(got.tokens, want.tokens), (name, t)
            assert torch.equal(got.exit_layers, want.exit_layers), (name, t)
            assert got.cost_layers == pytest.approx(want.cost_layers), (name, t)


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_a_replayed_schedule_stops_where_it_says_on_the_default_engine(lm: str) -> None:
    """A schedule replay stops at forced segments: under one graph per step the decoder captures its
    segments too, on demand, and the exits are the schedule's."""
    bb = _backbone(lm)
    inputs = _inputs(bb)
    m = _method(bb, "deebert")
    exits = [k for k in m.layers if k < bb.num_layers]
    schedule = [exits[i % len(exits)] for i in range(N_NEW - 1)] + [bb.num_layers]
    got = generate(bb, m, **inputs, threshold=0.5, engine="graphs", schedule=schedule)
    want = generate(bb, m, **inputs, threshold=0.5, schedule=schedule)
    assert got.exit_layers[0].tolist() == schedule == want.exit_layers[0].tolist()
    assert got.cost_layers == pytest.approx(want.cost_layers)
