"""Decoupled rows against rows riding along: which schedule of a bucket's captured segments costs less.

Riding along (what `graphs.batched` does), each step runs the segments up to the deepest row's exit,
once for all rows: a row that left early waits for the step to end. Decoupled rows (as in synchronized
parallel decoding) let a row that exited start its next token at segment 0 while deeper rows finish
theirs; each tick runs every segment that some row is at, once for all the rows there, so a segment's
call is shared only where rows happen to be at it together. At batch-1 widths a segment costs about
the same for 1 or 64 rows (weight- or launch-bound), so the answer turns on how often rows line up.

`riding_ticks` and `decoupled_ticks` turn recorded exit depths into the segment calls (and K/V fills)
each schedule makes; `replay_ticks` replays them on a decoder's captured segments, to be timed. That
is a schedule replay, as `generate(schedule=...)` is one: the kernels are the engine's, at its shapes,
and their time is measured; the tokens are not decoded (decoupled rows would also need a KV position
per row, which this replay does not keep, and which could only add to their cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from free_bench.engine.graphs.decoder import GraphDecoder


@dataclass(frozen=True)
class Tick:
    """One round of a schedule: the segments run (each once for the whole bucket) and the exits whose
    K/V fill runs after them (rows left there), then one read of the rows' status."""

    segments: tuple[int, ...]
    fills: tuple[int, ...]


def riding_ticks(depths: list[list[int]], last: int) -> list[Tick]:
    """depths[r][t]: the segment (0-based) where row r's token t leaves; `last`: the final segment
    (the model's head, no fill). One tick per step: segments up to the deepest row still decoding."""
    out = []
    for t in range(max(len(d) for d in depths)):
        here = [d[t] for d in depths if t < len(d)]
        out.append(Tick(tuple(range(max(here) + 1)), tuple(sorted({s for s in here if s != last}))))
    return out


def decoupled_ticks(depths: list[list[int]], last: int) -> list[Tick]:
    """Each tick runs every segment a row is at; a row then moves to its next segment, or past its exit
    to segment 0 of its next token (its exit's fill in the same tick); rows out of tokens drop."""
    where = [(0, 0) for _ in depths]  # per row: (token, segment)
    out = []
    while True:
        active = [(r, t, s) for r, (t, s) in enumerate(where) if t < len(depths[r])]
        if not active:
            return out
        leaving = {s for r, t, s in active if s == depths[r][t] and s != last}
        out.append(Tick(tuple(sorted({s for _, _, s in active})), tuple(sorted(leaving))))
        for r, t, s in active:
            where[r] = (t + 1, 0) if s == depths[r][t] else (t, s + 1)


def layer_count(ticks: list[Tick], decoder: GraphDecoder) -> int:
    """Decoder layers the schedule runs (each segment's layers once per tick it appears in)."""
    return sum(decoder.bounds[s][1] - decoder.bounds[s][0] for tick in ticks for s in tick.segments)


@torch.inference_mode()
def replay_ticks(decoder: GraphDecoder, ticks: list[Tick]) -> None:
    """Replay `ticks` on `decoder`'s captured token-step segments and fills (captured on first use;
    `decoder.start` must have loaded its rows), reading the status once per tick as a live decode does."""
    decoder._ready(decoder.step, parts=True)
    step, exits = decoder.step, list(decoder.exits)
    decoder._address(step.positions)
    for tick in ticks:
        for s in tick.segments:
            step.segments[s].replay()
        for s in tick.fills if decoder.policy == "propagate" else ():
            step.fills[exits[s]].replay()
        decoder.status.tolist()  # the tick's host read
