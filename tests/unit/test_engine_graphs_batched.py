"""Batches on the graphs engine, uncaptured on CPU: each row leaves at its own exit, the tokens, exits,
per-row and batch costs are the eager engine's, and moving rows into a smaller bucket changes nothing.

Capture itself needs CUDA (tests/gpu/test_graphs.py replays the captured buckets against this path).
"""

from __future__ import annotations

import pytest
import torch
from test_engine_exits import _assert_clear_of, _method, _mid_threshold, live_scores  # noqa: F401 (fixture)
from test_engine_graphs import METHODS, N_NEW  # same folder: the batch-1 graphs tests' settings

from free_bench.core.errors import FreeBenchError
from free_bench.engine import generate
from free_bench.engine.generate import special_tokens
from free_bench.engine.graphs.batched import bucket, decode_batch
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.methods import ExitMethod
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bb() -> Backbone:
    backbone = from_hf(build_tiny_blip2("opt", seed=2))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _graphs(bb: Backbone, m: ExitMethod | None, inputs: dict, threshold, *, policy: str = "propagate",
            compact: bool = True, fuse: bool = False,
            conditional: bool = False) -> tuple[dict, dict[int, GraphDecoder]]:  # fmt: skip
    """A batch through uncaptured bucket decoders; returns the fields and the decoders used."""
    static = int(threshold) if m is not None and m.rule == "static" else None
    made: dict[int, GraphDecoder] = {}

    def decoder_for(rows: int) -> GraphDecoder:
        if rows not in made:
            made[rows] = GraphDecoder(bb, m, kv_policy="full" if m is None else policy, capture=False,
                                      static_layer=static, fuse=fuse, batch_size=rows,
                                      conditional=conditional)  # fmt: skip
        return made[rows]

    eos, pad = special_tokens(bb)
    fields = decode_batch(
        decoder_for, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
        max_new_tokens=N_NEW, threshold=threshold, eos_ids=eos, pad_id=pad, compact=compact,
    )  # fmt: skip
    return fields, made


def test_buckets_are_powers_of_two() -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 33, 64, 65)] == [1, 2, 4, 4, 8, 8, 16, 64, 64, 128]


@pytest.mark.parametrize("policy, fuse, conditional", [("propagate", False, False), ("full", False, False),
                                                      ("propagate", True, False), ("propagate", True, True),
                                                      ("full", False, True)])  # fmt: skip
def test_each_row_leaves_at_its_own_exit_as_in_the_eager_engine(
    bb: Backbone, live_scores: list[torch.Tensor], policy: str, fuse: bool, conditional: bool  # noqa: F811
) -> None:
    """Three left-padded rows in a bucket of four: tokens, exit layers, confidences, the per-row count
    and the batch's own count equal the eager engine's batch, for every method; `conditional`: each
    step as one function, segments and fills under IFs (decided here on the host)."""
    inputs = tiny_inputs(bb.model, 3, padded=True, seed=5)
    full, _ = _graphs(bb, None, inputs, None)
    want_full = generate(bb, **inputs, max_new_tokens=N_NEW)
    assert torch.equal(full["tokens"], want_full.tokens)
    spread = set()
    for name in METHODS:
        m = _method(bb, name)
        threshold = _mid_threshold(m, inputs)
        live_scores.clear()
        want = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=threshold, kv_policy=policy)
        _assert_clear_of(m, torch.cat(live_scores), threshold)
        got, made = _graphs(bb, m, inputs, threshold, policy=policy, fuse=fuse, conditional=conditional)
        assert list(made) == [4], name  # nothing finished, nothing compacted
        assert torch.equal(got["tokens"], want.tokens), name
        assert torch.equal(got["exit_layers"], want.exit_layers), name
        assert torch.allclose(got["confidences"], want.confidences, atol=1e-5, equal_nan=True), name
        assert got["cost_layers"] == pytest.approx(want.cost_layers), name
        assert got["batch_cost_layers"] == pytest.approx(want.batch_cost_layers), name
        assert got["batch_full_cost_layers"] == pytest.approx(want.batch_full_cost_layers), name
        spread |= {tuple(row) for row in want.exit_layers.T.tolist() if len(set(row)) > 1}
    assert spread, "no step had rows leaving at different exits"


@pytest.mark.parametrize("conditional", [False, True])
def test_finished_rows_leave_for_a_smaller_bucket_and_change_nothing(
    live_scores: list[torch.Tensor], conditional: bool  # noqa: F811
) -> None:
    """Five rows (bucket 8), EOS set to a token some rows emit early: compacted into buckets 4, 2, 1 as
    rows finish, the same tokens, exits and costs as riding along to the end and as the eager engine."""
    backbone = from_hf(build_tiny_blip2("opt", seed=2))
    inputs = tiny_inputs(backbone.model, 5, padded=True, seed=11)
    m = _method(backbone, "deebert")
    threshold = _mid_threshold(m, inputs)
    firsts = generate(backbone, m, **inputs, max_new_tokens=N_NEW, threshold=threshold).tokens
    # the token that ends the most rows within the first half, a different step for some
    counts = torch.bincount(firsts[:, : N_NEW // 2].flatten())
    backbone.language_model.generation_config.eos_token_id = int(counts.argmax())
    live_scores.clear()
    want = generate(backbone, m, **inputs, max_new_tokens=N_NEW, threshold=threshold)
    _assert_clear_of(m, torch.cat(live_scores), threshold)
    moved, made = _graphs(backbone, m, inputs, threshold, compact=True, conditional=conditional)
    riding, kept = _graphs(backbone, m, inputs, threshold, compact=False, conditional=conditional)
    lengths = (want.exit_layers > 0).sum(1)
    assert int(lengths.min()) < int(lengths.max())  # rows finished at different steps
    assert len(made) > 1 and list(kept) == [8]
    for got in (moved, riding):
        for key in ("tokens", "exit_layers"):
            assert torch.equal(got[key], want[key] if isinstance(want, dict) else getattr(want, key)), key
        assert got["cost_layers"] == pytest.approx(want.cost_layers)
        assert got["batch_cost_layers"] == pytest.approx(want.batch_cost_layers)


def test_generate_routes_batches_to_buckets_and_refuses_what_it_cannot(bb: Backbone) -> None:
    m = _method(bb, "free")
    decoder = GraphDecoder(bb, m, capture=False, batch_size=2)
    eos, pad = special_tokens(bb)
    with pytest.raises(FreeBenchError, match="holds 2 row"):
        decoder.decode(**tiny_inputs(bb.model, 3, seed=1), max_new_tokens=2, threshold=0.5, eos_ids=eos, pad_id=pad)
    with pytest.raises(FreeBenchError, match="schedule replays one row"):
        GraphDecoder(bb, m, capture=False, batch_size=2).decode(
            **tiny_inputs(bb.model, 2, seed=1), max_new_tokens=2, threshold=0.5, eos_ids=eos, schedule=[2, 2])
    with pytest.raises(FreeBenchError, match="left-padded"):
        right = tiny_inputs(bb.model, 2, seed=1)
        right["attention_mask"] = right["attention_mask"].clone()
        right["attention_mask"][0, -1] = 0  # a hole at the end of row 0
        decoder.decode(**right, max_new_tokens=2, threshold=0.5, eos_ids=eos, pad_id=pad)
    with pytest.raises(FreeBenchError, match="at least one row"):
        GraphDecoder(bb, m, capture=False, batch_size=0)
