"""What an engine that skips layers needs from the layer runner, beyond `runner`'s token protocol.

- `open_prompt`: the first decoding step put in flight but not run, so the first new token can exit
  early too (OPT: the whole prompt, q = P positions; T5: the decoder start token after the encoder).
- `kv_projection` / `fill_kv`: the K/V a layer would cache for a hidden state, without running the
  layer (CALM's propagation of an exited state into the layers it skipped).
- `replay`: temporarily address positions [start, start + q) instead of the token in flight, so
  positions that skipped a layer can run it later, batched with the current token (deferred policy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from free_bench.backbone import runner, runner_opt, runner_t5
from free_bench.backbone.base import Backbone
from free_bench.backbone.runner_state import DecodeState
from free_bench.errors import FreeBenchError

_IMPL = {"opt": runner_opt, "t5": runner_t5}


def open_prompt(
    backbone: Backbone,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
) -> tuple[DecodeState, torch.Tensor]:
    """Prefix done, first step in flight: returns the state and the layer-1 input of that step.

    OPT: (B, P, D), the prompt's positions; the decision for the first new token reads the last one.
    T5: (B, 1, D), the decoder start token (the encoder has run over the prefix)."""
    embeds, mask = runner.prefix(backbone, pixel_values, input_ids, attention_mask)
    if backbone.lm_type == "t5":
        state = runner_t5.new_state(backbone, embeds, mask, max_new_tokens)
        return state, runner.begin_token(state, state.start_ids)
    if not bool(mask[:, -1].all()):
        raise FreeBenchError("OPT prompts must be left-padded (tokenizer.padding_side='left')")
    state = runner_opt.new_state(backbone, mask, embeds.shape[1] + max_new_tokens)
    return state, runner.begin_embeds(state, embeds)


def kv_projection(lm_type: str, layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, q, D) -> the K/V (b, H, q, Dh) that `layer` (an OPT layer or T5 block) would cache."""
    return _IMPL[lm_type].kv_projection(layer, hidden)


def fill_kv(state: DecodeState, index: int, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Write layer `index` (0-based)'s K/V for the positions in flight from `hidden` (b, q, D)."""
    k, v = kv_projection(state.backbone.lm_type, state.layers[index], hidden)
    state.kv.write(index, k.to(hidden.dtype), v.to(hidden.dtype), rows)


@contextmanager
def replay(state: DecodeState, start: int, like: torch.Tensor) -> Iterator[None]:
    """Address the q = like.shape[1] positions [start, start + q) (masks, T5 bias, KV writes) for the
    duration, then restore the token in flight. `like` is any (B, q, D) tensor (dtype and device)."""
    fields = ("q_len", "self_mask", "position_bias", "cross_mask", "cross_bias")  # what set_masks rewrites
    saved = (state.kv.pos, *(getattr(state, f) for f in fields))
    end = start + like.shape[1]
    if start < 0 or end > state.pos + state.q_len:
        raise FreeBenchError(
            f"replay of positions [{start}, {end}) outside the {state.pos + state.q_len} written"
        )
    state.kv.pos, state.q_len = start, like.shape[1]
    try:
        _IMPL[state.backbone.lm_type].set_masks(state, like)
        yield
    finally:
        state.kv.pos = saved[0]
        for f, value in zip(fields, saved[1:], strict=True):
            setattr(state, f, value)
