"""Decoupled rows against rows riding along: the segment calls each schedule makes from recorded exit
depths, and their replay on a decoder's segments (uncaptured here; timed on CUDA in
tests/benchmarks/bench_steps.py)."""

from __future__ import annotations

import random

import pytest
from test_engine_exits import _method
from test_engine_graphs import record_calls  # same folder

from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.engine.graphs.decoupled import Tick, decoupled_ticks, layer_count, replay_ticks, riding_ticks
from free_bench.models import from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")


def test_riding_along_runs_each_step_to_its_deepest_row() -> None:
    # row 0 leaves at segment 0 then at the head (segment 2); row 1 the other way round
    ticks = riding_ticks([[0, 2], [2, 0]], last=2)
    assert ticks == [Tick((0, 1, 2), (0,)), Tick((0, 1, 2), (0,))]


def test_decoupled_rows_share_a_segment_only_where_they_meet() -> None:
    ticks = decoupled_ticks([[0, 2], [2, 0]], last=2)
    assert ticks == [Tick((0,), (0,)), Tick((0, 1), ()), Tick((1, 2), ()), Tick((0, 2), (0,))]
    assert sum(len(t.segments) for t in ticks) == 7  # riding along: 6


def test_each_row_runs_each_of_its_segments_once_per_token() -> None:
    """Replaying the decoupled schedule, every row passes segments 0..exit of each of its tokens, in
    order, and nothing else; riding along runs, per step, at least what every row needs."""
    rng = random.Random(0)
    for _ in range(50):
        depths = [[rng.randrange(4) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 5))]
        seen = [[] for _ in depths]
        where = [(0, 0) for _ in depths]
        for tick in decoupled_ticks(depths, last=3):
            for r, (t, s) in enumerate(where):
                if t < len(depths[r]):
                    assert s in tick.segments
                    seen[r].append(s)
                    where[r] = (t + 1, 0) if s == depths[r][t] else (t, s + 1)
        assert seen == [[s for d in row for s in range(d + 1)] for row in depths]
        for t, tick in enumerate(riding_ticks(depths, last=3)):
            assert set(tick.segments) >= {s for row in depths if t < len(row) for s in range(row[t] + 1)}


def test_a_schedule_replays_its_segments_and_fills() -> None:
    bb = from_hf(build_tiny_blip2("opt", seed=2))
    m = _method(bb, "deebert")
    decoder = GraphDecoder(bb, m, capture=False, batch_size=4)
    calls: list[str] = []
    record_calls(decoder, calls, segment="s", fill="f")
    inputs = tiny_inputs(bb.model, 4, seed=3)
    decoder.start(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], max_new_tokens=4,
                  threshold=0.5)  # fmt: skip
    last = len(decoder.bounds) - 1
    ticks = decoupled_ticks([[0, last], [1, 0], [last], [0, 0, 0]], last)
    replay_ticks(decoder, ticks)
    want = [f"s{s}" for t in ticks for s in t.segments]
    assert [c for c in calls if c.startswith("s")] == want
    assert [c for c in calls if c.startswith("f")] == [f"f{decoder.exits[s]}" for t in ticks for s in t.fills]
    assert layer_count(ticks, decoder) == sum(decoder.bounds[s][1] - decoder.bounds[s][0] for t in ticks
                                              for s in t.segments)  # fmt: skip
