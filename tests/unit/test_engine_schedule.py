"""Exit schedules (replays): each token leaves where the schedule says, paying the checks a live decode
pays; a schedule that repeats a live decode's exit layers is that decode, token for token and cost for
cost, on both engines."""

from __future__ import annotations

import pytest
import torch
from test_engine_exits import ALWAYS, METHODS, _method  # same folder: the eager engine's fixtures

from free_bench.core.errors import FreeBenchError
from free_bench.engine import generate
from free_bench.engine.generate import special_tokens
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")
N_NEW = 6
MID = {"max_prob": None, "entropy": None, "patience": 2.0, "cosine": None}


@pytest.fixture(scope="module", params=["opt", "t5"])
def bb(request: pytest.FixtureRequest) -> Backbone:
    backbone = from_hf(build_tiny_blip2(request.param, seed=3))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _mid_threshold(bb: Backbone, m, inputs: dict) -> float:
    """A threshold that sends tokens to different exits: the median score an always-exit decode saw."""
    if m.rule == "static":
        return float(m.layers[1])
    if m.rule == "patience":
        return 2.0
    scores = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=ALWAYS[m.rule]).confidences
    return float(scores.flatten().float().median())


def _graphs(bb: Backbone, m, threshold: float, inputs: dict, schedule=None) -> dict:
    static = int(threshold) if m.rule == "static" else None
    decoder = GraphDecoder(bb, m, kv_policy="propagate", capture=False, static_layer=static)
    eos, _ = special_tokens(bb)
    return decoder.decode(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                          max_new_tokens=N_NEW, threshold=threshold, eos_ids=eos, schedule=schedule)  # fmt: skip


def test_a_schedule_of_a_live_decodes_layers_is_that_decode(bb: Backbone) -> None:
    inputs = tiny_inputs(bb.model, 1, seed=5)
    for name in METHODS[bb.lm_type]:
        m = _method(bb, name)
        t = _mid_threshold(bb, m, inputs)
        live = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t)
        schedule = live.exit_layers[0].tolist()
        replay = generate(bb, m, **inputs, threshold=t, schedule=schedule)
        assert replay.exit_layers[0].tolist() == schedule, name
        assert torch.equal(replay.tokens, live.tokens), name
        assert replay.cost_layers == pytest.approx(live.cost_layers), name
        if bb.lm_type == "opt":  # the graphs engine (uncaptured on CPU) replays it alike
            got = _graphs(bb, m, t, inputs, schedule)
            assert got["exit_layers"][0].tolist() == schedule, name
            assert torch.equal(got["tokens"], live.tokens), name
            assert got["cost_layers"] == pytest.approx(live.cost_layers), name


def test_any_schedule_is_followed_and_both_engines_price_it_alike(bb: Backbone) -> None:
    """Depths the rule would never choose (the static method's single exit aside): followed token by
    token; the costs equal the engine's prices for those depths, the same on both engines."""
    inputs = tiny_inputs(bb.model, 1, seed=6)
    L = bb.num_layers
    for name in METHODS[bb.lm_type]:
        m = _method(bb, name)
        t = _mid_threshold(bb, m, inputs)
        exits = [k for k in m.layers if k < L]
        if m.rule == "static":
            exits = [int(t)]
        schedule = [exits[i % len(exits)] if i % 3 else L for i in range(N_NEW)]
        replay = generate(bb, m, **inputs, threshold=t, schedule=schedule)
        assert replay.exit_layers[0].tolist() == schedule and replay.tokens.shape == (1, N_NEW), name
        full = generate(bb, **inputs, max_new_tokens=N_NEW)
        assert replay.full_cost_layers == pytest.approx(full.cost_layers), name
        if bb.lm_type == "opt":
            got = _graphs(bb, m, t, inputs, schedule)
            assert got["exit_layers"][0].tolist() == schedule, name
            assert got["cost_layers"] == pytest.approx(replay.cost_layers), name


def test_stop_at_eos_false_decodes_every_token() -> None:
    bb = from_hf(build_tiny_blip2("opt", seed=3))
    inputs = tiny_inputs(bb.model, 1, seed=5)
    first = generate(bb, **inputs, max_new_tokens=1).tokens[0, 0].item()
    bb.language_model.generation_config.eos_token_id = bb.lm_config.eos_token_id = first  # stops at once
    assert generate(bb, **inputs, max_new_tokens=5).tokens.shape[1] == 1
    assert generate(bb, **inputs, max_new_tokens=5, stop_at_eos=False).tokens.shape[1] == 5
    m = _method(bb, "deebert")
    assert generate(bb, m, **inputs, threshold=1e9, schedule=[2, 4, 4]).tokens.shape[1] == 3


def test_what_a_schedule_refuses(bb: Backbone) -> None:
    m = _method(bb, "deebert", "1,2")
    one = tiny_inputs(bb.model, 1, seed=5)
    with pytest.raises(FreeBenchError, match=r"consulted exit \[1, 2\].*got \[99\]"):
        generate(bb, m, **one, threshold=1.0, schedule=[2, 99])
    with pytest.raises(FreeBenchError, match="one layer per token"):
        generate(bb, m, **one, threshold=1.0, schedule=[])
    with pytest.raises(FreeBenchError, match="replays one row"):
        generate(bb, m, **tiny_inputs(bb.model, 2, padded=True, seed=5), threshold=1.0, schedule=[2])
    with pytest.raises(FreeBenchError, match="needs exits"):
        generate(bb, **one, schedule=[2])
