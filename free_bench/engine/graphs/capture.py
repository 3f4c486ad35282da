"""What the `graphs` engine captures: functions of fixed buffers (`Graphed`), grouped into the passes
of one step shape (`Pass`), and how a group is captured (warm-up on a side stream, then one CUDA
graph each, as `torch.cuda.graphs` asks)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class Graphed:
    """A function of fixed buffers, replayed as its CUDA graph once captured (else run eagerly)."""

    run: Callable[[], None]
    graph: torch.cuda.CUDAGraph | None = None

    def replay(self) -> None:
        if self.graph is None:
            self.run()
        else:
            self.graph.replay()


@dataclass(eq=False)
class Pass:
    """One step shape: the token step (q = 1) or a prompt of q = P positions. Segment i runs layers
    bounds[i] and then exit bounds[i][1]'s check (or the model's head at L), reading segment i-1's
    output buffer; under `propagate`, `fills[k]` writes exit k's output into the K/V above it; `whole`
    is all of them as one function (`graphs.conditional`)."""

    positions: torch.Tensor  # (q,) the KV slots this step writes
    outputs: list[torch.Tensor]  # (B, q, D) per segment
    segments: list[Graphed]
    fills: dict[int, Graphed]
    whole: Graphed | None = None  # one graph per step: segments and fills under conditional nodes
    embeds: torch.Tensor | None = None  # prompt passes: (B, P, D') input buffer
    captured: bool = False  # what a step replays: `whole`, else the segments and fills
    parts_captured: bool = False  # the segments and fills (a replay that stops at a forced segment)


@contextmanager
def no_collection() -> Iterator[None]:
    """Python's garbage collector paused: a collection inside a capture would run the finalizers of
    dead decoders (their CUDA graphs and memory pools), CUDA calls a capturing stream forbids; and
    `torch.cuda.graph` no longer collects first (torch.compiler.config.force_cudagraph_gc is off).
    The H200 tests at commit a1077b0: one capture failed "due to a previous error during capture" after many
    compiled decoders had died (a likely cause, not a proven one)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def capture(parts: list[Graphed], warmups: int = 2) -> None:
    """Warm every part on a side stream (allocator, lazy init, compilation), then capture each.

    `thread_local`: only this thread's calls are checked during a capture, so a CUDA call another
    thread makes meanwhile (none of ours reads or writes the captured buffers) cannot invalidate it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            for part in parts:
                part.run()
    torch.cuda.current_stream().wait_stream(side)
    for part in parts:
        part.graph = torch.cuda.CUDAGraph()
        with no_collection(), torch.cuda.graph(part.graph, capture_error_mode="thread_local"):
            part.run()
    torch.cuda.synchronize()
