"""Self-speculative decoding: the exits draft, one full pass verifies; the tokens are HF `generate()`'s
for every method, threshold and draft length, on OPT and T5."""

from __future__ import annotations

import pytest
import torch
from test_engine_exits import ALWAYS, METHODS, NEVER, _method  # same folder: the eager engine's fixtures

from free_bench.core.errors import FreeBenchError
from free_bench.engine import generate
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")
N_NEW = 8


@pytest.fixture(scope="module", params=["opt", "t5"])
def bb(request: pytest.FixtureRequest) -> Backbone:
    """EOS off, so every row decodes N_NEW tokens and drafts run past where an answer would end."""
    backbone = from_hf(build_tiny_blip2(request.param, seed=2))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _hf(bb: Backbone, inputs: dict, n: int) -> torch.Tensor:
    out = bb.model.generate(**inputs, do_sample=False, max_new_tokens=n)
    return out[:, inputs["input_ids"].shape[1] :] if bb.lm_type == "opt" else out[:, 1:]


def _thresholds(m) -> list[float]:
    if m.rule == "static":
        return [float(k) for k in m.layers if k < m.backbone.num_layers]
    if m.rule == "patience":
        return [1.0, 2.0]
    mid = {"max_prob": 0.5, "entropy": 1.0, "cosine": 0.5}[m.rule]
    return [ALWAYS[m.rule], mid, NEVER[m.rule]]


def test_speculative_tokens_are_the_full_models(bb: Backbone) -> None:
    inputs = tiny_inputs(bb.model, 1, seed=5)
    want = _hf(bb, inputs, N_NEW)
    rejected = drafted = 0
    for name in METHODS[bb.lm_type]:
        m = _method(bb, name)
        for t in _thresholds(m):
            for k in (1, 3, 8):
                res = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, decode="speculative", draft_len=k)
                assert torch.equal(res.tokens, want), (name, t, k)
                s = res.speculative
                assert s["accepted"] <= s["drafted"] and s["verify_passes"] >= 1, (name, t, k)
                assert s["tokens_per_pass"] == pytest.approx(N_NEW / s["verify_passes"]), (name, t, k)
                assert res.full_cost_layers == pytest.approx(generate(bb, **inputs, max_new_tokens=N_NEW).cost_layers)
                rejected += s["drafted"] - s["accepted"]
                drafted += s["drafted"]
    assert drafted and rejected  # drafts were made, and some were wrong: verification mattered


def test_drafts_that_ran_the_whole_model_are_accepted(bb: Backbone) -> None:
    """A threshold that never fires: every draft ran the whole model (which ends its round at once) and
    the verification agrees with it."""
    inputs = tiny_inputs(bb.model, 1, seed=5)
    m = _method(bb, "deebert")
    res = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule], decode="speculative", draft_len=4)
    assert torch.equal(res.tokens, _hf(bb, inputs, N_NEW))
    assert (res.exit_layers == bb.num_layers).all()
    assert res.speculative["accepted"] == res.speculative["drafted"] > 0


def test_speculative_stops_at_eos_as_greedy_does() -> None:
    bb = from_hf(build_tiny_blip2("opt", seed=2))
    inputs = tiny_inputs(bb.model, 1, seed=5)
    third = generate(bb, **inputs, max_new_tokens=3).tokens[0, 2].item()
    bb.language_model.generation_config.eos_token_id = bb.lm_config.eos_token_id = third
    want = generate(bb, **inputs, max_new_tokens=8)
    m = _method(bb, "deebert")
    res = generate(bb, m, **inputs, max_new_tokens=8, threshold=1e9, decode="speculative", draft_len=4)
    assert torch.equal(res.tokens, want.tokens) and res.tokens.shape[1] <= 3


def test_what_speculative_refuses(bb: Backbone) -> None:
    m = _method(bb, "deebert")
    one = tiny_inputs(bb.model, 1, seed=5)
    with pytest.raises(FreeBenchError, match="one row"):
        generate(bb, m, **tiny_inputs(bb.model, 2, padded=True, seed=5), threshold=1.0, decode="speculative")
    with pytest.raises(FreeBenchError, match="draft_len"):
        generate(bb, m, **one, threshold=1.0, decode="speculative", draft_len=0)
    with pytest.raises(FreeBenchError, match="propagate"):
        generate(bb, m, **one, threshold=1.0, decode="speculative", kv_policy="deferred")
    with pytest.raises(FreeBenchError, match="decode"):
        generate(bb, m, **one, threshold=1.0, decode="beam")
