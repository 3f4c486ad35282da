"""T5 on the graphs engine, uncaptured on CPU: the encoder once into fixed cross-attention buffers, the
decoder's start token as a one-position prompt, the relative position bias built on the device; the
tokens, exits, confidences and costs are the eager engine's, batch 1 and in buckets, and speculative
decoding gives HF `generate()`'s tokens.

Capture itself needs CUDA (tests/gpu/test_graphs.py replays the captured decoders against this path).
"""

from __future__ import annotations

import pytest
import torch
from test_engine_exits import ALWAYS, NEVER, TIE_MARGIN, _method, _mid_threshold, live_scores  # noqa: F401

from free_bench.engine import generate
from free_bench.engine.generate import graph_decoder, special_tokens
from free_bench.engine.graphs.batched import decode_batch
from free_bench.engine.graphs.speculative import speculative_graphs
from free_bench.methods import ExitMethod
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")
N_NEW = 8
METHODS = ("free", "deebert", "pabee", "distill", "static", "mue")
_PLAIN = {"capture": False, "compile_segments": False}  # the engine's fixed-shape code, run eagerly


@pytest.fixture(scope="module")
def bb() -> Backbone:
    backbone = from_hf(build_tiny_blip2("t5", seed=2))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _graphs(bb: Backbone, m: ExitMethod | None, inputs: dict, t, *, policy: str = "propagate",
            compact: bool = True, conditional: bool = False) -> dict:  # fmt: skip
    """`generate(engine="graphs")`'s route (bucket decoders from `graph_decoder`), uncaptured."""
    eos, pad = special_tokens(bb)

    def decoder_for(rows: int):
        return graph_decoder(bb, m, policy, t, inputs["input_ids"], N_NEW, rows, **_PLAIN,
                              conditional=conditional)  # fmt: skip

    args = (inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"))
    if inputs["pixel_values"].shape[0] == 1:
        return decoder_for(1).decode(*args, max_new_tokens=N_NEW, threshold=t, eos_ids=eos, pad_id=pad)
    return decode_batch(decoder_for, *args, max_new_tokens=N_NEW, threshold=t, eos_ids=eos, pad_id=pad,
                        compact=compact)  # fmt: skip


def _thresholds(m: ExitMethod, inputs: dict) -> list[float]:
    mid = _mid_threshold(m, inputs)
    if m.rule == "static":
        return [float(k) for k in m.layers if k < m.backbone.num_layers]
    return [mid] + ([] if m.rule == "patience" else [ALWAYS[m.rule], NEVER[m.rule]])


def _same(got: dict, want, key: tuple, rtol: float = 0.0) -> None:
    assert torch.equal(got["tokens"], want.tokens), key
    assert torch.equal(got["exit_layers"], want.exit_layers), key
    assert got["cost_layers"] == pytest.approx(want.cost_layers), key
    assert got["batch_cost_layers"] == pytest.approx(want.batch_cost_layers), key
    assert torch.allclose(got["confidences"], want.confidences, rtol=rtol, atol=1e-5, equal_nan=True), key


@pytest.mark.parametrize("policy, conditional", [("propagate", False), ("full", False), ("propagate", True)])
def test_t5_decodes_as_the_eager_engine_and_hf(bb: Backbone, policy: str, conditional: bool) -> None:
    """Every method at thresholds that exit early, mid-way and never; `conditional` runs each step as
    the one-graph function (segments and fills under IFs, decided here on the host)."""
    inputs = tiny_inputs(bb.model, 1, seed=5)
    hf = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)
    full = _graphs(bb, None, inputs, None, conditional=conditional)
    assert torch.equal(full["tokens"], hf[:, 1:])  # HF's output starts with the decoder start token
    seen = set()
    for name in METHODS:
        m = _method(bb, name)
        for t in _thresholds(m, inputs):
            want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy)
            _same(_graphs(bb, m, inputs, t, policy=policy, conditional=conditional), want, (name, t))
            seen |= set(want.exit_layers.flatten().tolist())
    assert len(seen) >= 3  # the thresholds really spread tokens over exits


@pytest.mark.parametrize("compact", [True, False])
def test_t5_buckets_decode_a_batch_as_the_eager_engine(bb: Backbone, compact: bool) -> None:
    """Five rows of different prompts (padded encoder inputs) in a bucket of 8, each row at its own exit;
    with EOS at a token some rows emit early, finished rows move into smaller buckets (encoder slots and
    cross K/V with them) or ride along, and either way the fields are the eager engine's (whose own
    `compact=False` would count the rows riding along as work: here they are counted at their exits)."""
    inputs = tiny_inputs(bb.model, 5, seed=3)
    full = generate(bb, **inputs, max_new_tokens=N_NEW).tokens
    eos = int(full[0, 2])
    bb.language_model.generation_config.eos_token_id = eos
    try:
        for name in ("free", "deebert", "pabee"):
            m = _method(bb, name)
            t = _mid_threshold(m, inputs)
            want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t)
            # padded rows attend over the encoder's fixed slots, the eager engine over the prompt's own:
            # scores agree to 1e-4 of their value (entropy, here), the decisions exactly
            _same(_graphs(bb, m, inputs, t, compact=compact), want, (name, compact), rtol=2e-4)
    finally:
        bb.language_model.generation_config.eos_token_id = None


def _clear(m: ExitMethod, inputs: dict, live_scores: list[torch.Tensor], k: int) -> float:  # noqa: F811
    """A threshold near the middle that every score the eager speculative decode compares with keeps
    clear of (drafts repeat inputs, and a draft's score can land on the mid threshold itself)."""
    mid = _mid_threshold(m, inputs)
    if m.rule in ("patience", "static"):  # integers: no rounding
        return mid
    for t in (mid * f for f in (1.0, 0.995, 1.005, 0.98, 1.02, 0.95)):
        if m.rule == "max_prob" and t > 1:
            continue
        live_scores.clear()
        generate(m.backbone, m, **inputs, max_new_tokens=N_NEW, threshold=t, decode="speculative", draft_len=k)
        if float(((torch.cat(live_scores) - t).abs() / abs(t)).min()) > TIE_MARGIN:
            return t
    raise AssertionError(f"{m.name}: no threshold near {mid} clear of the draft scores")


def test_t5_speculative_gives_the_full_models_tokens(bb: Backbone, live_scores: list[torch.Tensor]) -> None:  # noqa: F811
    inputs = tiny_inputs(bb.model, 1, seed=5)
    want = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)[:, 1:]
    eos, _ = special_tokens(bb)
    for name in ("free", "deebert", "static"):
        m = _method(bb, name)
        for k in (1, 3):
            t = _clear(m, inputs, live_scores, k)
            decoder = graph_decoder(bb, m, "propagate", t, inputs["input_ids"], N_NEW + k + 1, **_PLAIN)
            got = speculative_graphs(decoder, inputs["pixel_values"], inputs["input_ids"],
                                     inputs.get("attention_mask"), max_new_tokens=N_NEW, threshold=t,
                                     draft_len=k, eos_ids=eos)  # fmt: skip
            eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, decode="speculative", draft_len=k)
            assert torch.equal(got["tokens"], want), (name, k)
            assert got["speculative"] == eager.speculative, (name, k)
            assert got["cost_layers"] == pytest.approx(eager.cost_layers), (name, k)
            assert got["speculative"]["drafted"] > 0


def test_a_t5_decoder_reused_across_prompts_forgets_the_last_one(bb: Backbone) -> None:
    """The fixed encoder slots keep the previous prompt's cross K/V: the cross mask must hide them."""
    m = _method(bb, "free")
    long_prompt = tiny_inputs(bb.model, 1, text_len=9, seed=1)
    short_prompt = tiny_inputs(bb.model, 1, text_len=3, seed=3)
    decoder = graph_decoder(bb, m, "propagate", 0.5, long_prompt["input_ids"], N_NEW, **_PLAIN)
    eos, pad = special_tokens(bb)
    for inputs in (long_prompt, short_prompt):
        got = decoder.decode(inputs["pixel_values"], inputs["input_ids"], None, max_new_tokens=N_NEW,
                             threshold=0.5, eos_ids=eos, pad_id=pad)  # fmt: skip
    want = generate(bb, m, **short_prompt, max_new_tokens=N_NEW, threshold=0.5)
    assert torch.equal(got["tokens"], want.tokens) and torch.equal(got["exit_layers"], want.exit_layers)
