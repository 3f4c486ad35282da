"""One CUDA graph per decoding step, the exit decisions taken on the device.

With one graph per segment, a token step costs a graph launch and a host read of the exit's verdict
per segment: at the gpu profile's width (512) a segment of a few layers runs in tens of microseconds,
so those reads and the gaps they leave are a large share of a token. CUDA graph conditional nodes
(IF nodes, CUDA >= 12.4; PyTorch's `CUDAGraph.begin_capture_to_if_node`) let one captured graph hold
every segment, each nested in an IF on "some row is still undecided", and each fill in an IF on "a row
left at this exit": the device skips what no row needs, and the host reads the step's status once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from free_bench.engine.graphs.capture import Graphed

log = logging.getLogger(__name__)
# errors of conditional captures this process fell back from (`refused`): what step mode the graphs
# engine really ran is then one graph per segment, and `graph_step_mode` says so
REFUSED: list[str] = []


def supported() -> bool:
    """Whether this torch build captures conditional nodes (a CUDA >= 12.4 build, CUDA present)."""
    return (
        torch.cuda.is_available()
        and hasattr(torch.cuda.CUDAGraph, "get_currently_capturing_graph")
        and hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node")
    )


def when(pred: torch.Tensor, body: Callable[[], None], always: bool = False) -> None:
    """`body()` if `pred` (a 0-d bool tensor on the device) holds when the step reaches this point.

    Inside a capture: an IF node whose graph is `body`'s kernels, decided on the device at each
    replay. Outside one: decided on the host by reading `pred` (how the CPU tests run the same step),
    or run unconditionally with `always` (warm-up, which must compile and allocate every branch before
    the capture records it)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
        graph.begin_capture_to_if_node(pred)
        try:
            body()
        finally:
            graph.end_capture_to_conditional_node()
    elif always or bool(pred):
        body()


def refused(err: Exception) -> None:
    """A step's conditional capture failed: recorded and logged; the decoder captures per segment."""
    REFUSED.append(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    log.warning("[graphs] one graph per step failed to capture (%s): one graph per segment instead", REFUSED[-1])


def graph_step_mode(conditional: bool | None = None) -> str:
    """How a captured decoder replays a step: what `GraphDecoder(conditional=...)` picks on CUDA (None:
    this process's default, and per segment with the reason where a conditional capture failed)."""
    if conditional is None and REFUSED:
        return f"one graph per segment (one graph per step failed to capture: {REFUSED[0]})"
    on = supported() if conditional is None else conditional
    return "one graph per step" if on else "one graph per segment"


def step_function(segments: list[Graphed], fills: dict[int, Graphed], *, go: torch.Tensor,
                  left: dict[int, torch.Tensor], layer: torch.Tensor, live: torch.Tensor, every_segment: bool,
                  warming: Callable[[], bool]) -> Callable[[], None]:  # fmt: skip
    """A step as one function (one graph once captured): segment i + 1 inside an IF on `go` ("a row is
    undecided", which each segment updates) after segment i (`every_segment`, the `full` policy: all of
    them, unconditionally), then exit k's K/V fill inside an IF on `left[k]`, set here from `layer` (B,)
    and `live` (B,) ("a live row left at k"). `warming()`: every branch runs (capture's warm-up)."""

    def from_segment(i: int) -> None:
        segments[i].run()
        if i + 1 == len(segments):
            return
        if every_segment:
            from_segment(i + 1)
        else:
            when(go, lambda: from_segment(i + 1), always=warming())

    def run() -> None:
        from_segment(0)
        for k, fill in fills.items():
            left[k].copy_(((layer == k) & live).any())
            when(left[k], fill.run, always=warming())

    return run
