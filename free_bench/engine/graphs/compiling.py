"""How the graphs engine hands its code to inductor before capture: each segment (`compile_segments`),
or one layer function shared by every layer and decoder of a process (`compile_layers`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from free_bench.engine.graphs.fused import fused_layer

# dynamo keeps its compiled code per code object, and every segment of every decoder shares `run`'s:
# at its default limit (8) the ninth segment compiled in a process fell back to eager code, silently
# (the bench at commit a1077b0: the third decoder's exit checks). Guards run only in warm-up and capture, never
# in a replay, so a high limit costs nothing per token; past it, an error rather than eager code.
_RECOMPILES = {
    "recompile_limit": 4096,
    "accumulated_recompile_limit": 4096,
    "fail_on_recompile_limit_hit": True,
}


def compiled(fn: Callable, mode: str | None = None, tune: bool = False) -> Callable:
    """`fn` through inductor, with room for one compiled entry per segment of every decoder; `tune`:
    with coordinate-descent tuning, under which one-row matrix products become tuned reductions
    (`fused.split_bias_linear`)."""
    compiled_fn = torch.compile(fn, dynamic=False, mode=mode)
    inductor = {"coordinate_descent_tuning": True} if tune else {}

    def call(*args, **kwargs):
        with torch._dynamo.config.patch(**_RECOMPILES), torch._inductor.config.patch(**inductor):
            return compiled_fn(*args, **kwargs)

    return call


# `compile_layers`: `fused.fused_layer` compiled once for the process, so every layer of every decoder of
# one shape runs the same compiled code
SHARED_LAYERS: dict[str, Callable[..., torch.Tensor]] = {}


def shared_layer(tune: bool) -> Callable[..., torch.Tensor]:
    """The process's compiled `fused_layer` (tuned or not), compiled on first use."""
    name = "layer-tuned" if tune else "layer"
    if name not in SHARED_LAYERS:
        SHARED_LAYERS[name] = compiled(fused_layer, tune=tune)
    return SHARED_LAYERS[name]
