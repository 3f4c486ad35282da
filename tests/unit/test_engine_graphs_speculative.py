"""Self-speculative decoding on the graphs engine, uncaptured on CPU: the tokens are HF `generate()`'s
for every method, threshold and draft length, and the rounds (drafts, acceptances, passes, costs) are
the eager engine's."""

from __future__ import annotations

import pytest
import torch
from test_engine_exits import ALWAYS, NEVER, _assert_clear_of, _method, _mid_threshold, live_scores  # noqa: F401
from test_engine_graphs import METHODS, N_NEW  # same folder: the batch-1 graphs tests' settings

from free_bench.core.errors import FreeBenchError
from free_bench.engine import generate
from free_bench.engine.generate import special_tokens
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.engine.graphs.speculative import speculative_graphs
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bb() -> Backbone:
    backbone = from_hf(build_tiny_blip2("opt", seed=2))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _speculative(bb: Backbone, m, inputs: dict, threshold: float, k: int, fuse: bool = False,
                 conditional: bool = False) -> dict:  # fmt: skip
    static = int(threshold) if m.rule == "static" else None
    decoder = GraphDecoder(bb, m, capture=False, static_layer=static, fuse=fuse, capacity=64,
                           conditional=conditional)  # fmt: skip
    eos, _ = special_tokens(bb)
    return speculative_graphs(decoder, inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                              max_new_tokens=N_NEW, threshold=threshold, draft_len=k, eos_ids=eos)  # fmt: skip


@pytest.mark.parametrize("fuse, conditional", [(False, False), (True, False), (False, True)])
def test_graphs_speculative_is_lossless_and_drafts_as_the_eager_engine(
    bb: Backbone, live_scores: list[torch.Tensor], fuse: bool, conditional: bool  # noqa: F811
) -> None:
    inputs = tiny_inputs(bb.model, 1, seed=5)
    want = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)[:, inputs["input_ids"].shape[1] :]
    rejected = 0
    for name in METHODS:
        m = _method(bb, name)
        mid = _mid_threshold(m, inputs)
        extremes = [] if m.rule in ("patience", "static") else [ALWAYS[m.rule], NEVER[m.rule]]
        for t in [mid, *extremes]:
            for k in (1, 3, 8):
                live_scores.clear()
                eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, decode="speculative",
                                 draft_len=k)  # fmt: skip
                got = _speculative(bb, m, inputs, t, k, fuse, conditional)
                assert torch.equal(got["tokens"], want), (name, t, k)
                if t == mid:
                    _assert_clear_of(m, torch.cat(live_scores), t) if live_scores else None
                    assert got["speculative"] == eager.speculative, (name, t, k)
                    assert torch.equal(got["exit_layers"], eager.exit_layers), (name, t, k)
                    assert got["cost_layers"] == pytest.approx(eager.cost_layers), (name, t, k)
                rejected += got["speculative"]["drafted"] - got["speculative"]["accepted"]
    assert rejected > 0  # verification did real work


def test_an_answer_ends_at_eos_and_bad_arguments_are_refused() -> None:
    backbone = from_hf(build_tiny_blip2("opt", seed=2))
    inputs = tiny_inputs(backbone.model, 1, seed=5)
    full = generate(backbone, **inputs, max_new_tokens=N_NEW).tokens[0]
    backbone.language_model.generation_config.eos_token_id = int(full[3])
    m = _method(backbone, "deebert")
    want = generate(backbone, **inputs, max_new_tokens=N_NEW).tokens
    got = _speculative(backbone, m, inputs, 1.0, 4)
    assert torch.equal(got["tokens"], want) and got["tokens"].shape[1] <= 4
    with pytest.raises(FreeBenchError, match="draft_len"):
        _speculative(backbone, m, inputs, 1.0, 0)
    with pytest.raises(FreeBenchError, match="one row"):
        _speculative(backbone, m, tiny_inputs(backbone.model, 2, seed=5), 1.0, 2)
