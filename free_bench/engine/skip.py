"""What an engine that skips layers needs from the layer runner, beyond `runner`'s token protocol.

- `open_prompt`: the first decoding step put in flight but not run, so the first new token can exit
  early too (OPT: the whole prompt, q = P positions; T5: the decoder start token after the encoder).
- `kv_projection` / `StackedKV` / `fill_kv_from`: the K/V a layer (or every layer from one on) would
  cache for a hidden state, without running it (CALM's propagation of an exited state).
- `replay`: temporarily address positions [start, start + q) instead of the token in flight, so
  positions that skipped a layer can run it later, batched with the current token (deferred policy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from free_bench.core.errors import FreeBenchError
from free_bench.models import runner, runner_opt, runner_t5
from free_bench.models.base import Backbone
from free_bench.models.runner_state import DecodeState

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
    state = runner.new_state(backbone, embeds, mask, max_new_tokens)
    if backbone.lm_type == "t5":
        return state, runner.begin_token(state, state.start_ids)
    return state, runner.begin_embeds(state, embeds)


def kv_projection(lm_type: str, layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, q, D) -> the K/V (b, H, q, Dh) that `layer` (an OPT layer or T5 block) would cache."""
    return _IMPL[lm_type].kv_projection(layer, hidden)


class StackedKV:
    """The K/V projections of every layer as one matmul on one normalised state.

    Each layer computes k_j = W_j (g_j * n(h) + b_j) + c_j with n its norm without the affine part,
    so folding g_j and b_j into W_j, c_j gives all layers' K/V from n(h) at once: CALM's propagation
    of an exited state into L - e layers costs one launch instead of several per layer. Same values
    as `kv_projection` up to rounding (tested)."""

    def __init__(self, lm_type: str, layers: list[nn.Module]) -> None:
        self.lm_type = lm_type
        weights, biases = [], []
        for layer in layers:
            if lm_type == "opt":
                attn, norm = (
                    layer.self_attn,
                    layer.self_attn_layer_norm if layer.do_layer_norm_before else None,
                )
                projections = (attn.k_proj, attn.v_proj)
                self.heads, self.eps = attn.num_heads, getattr(norm, "eps", 0.0)
            else:
                attn, norm = layer.layer[0].SelfAttention, layer.layer[0].layer_norm
                projections = (attn.k, attn.v)
                self.heads, self.eps = attn.n_heads, norm.variance_epsilon
            for proj in projections:
                w = proj.weight.detach().float()  # (H*Dh, D)
                b = (
                    proj.bias.detach().float()
                    if proj.bias is not None
                    else torch.zeros(w.shape[0], device=w.device)
                )
                if norm is not None and getattr(norm, "bias", None) is not None:
                    b = b + w @ norm.bias.detach().float()
                if norm is not None:
                    w = w * norm.weight.detach().float()[None, :]
                weights.append(w)
                biases.append(b)
        self.pre_norm = lm_type == "t5" or bool(layers[0].do_layer_norm_before)
        dtype = layers[0].parameters().__next__().dtype
        self.weight = torch.cat(weights).to(dtype)  # (L * 2 * H*Dh, D): layer-major, k then v
        self.bias = torch.cat(biases).to(dtype)
        self.width = weights[0].shape[0]  # H*Dh

    def _normalise(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.pre_norm:
            return hidden
        if self.lm_type == "opt":
            return nn.functional.layer_norm(hidden, hidden.shape[-1:], eps=self.eps)
        variance = hidden.float().pow(2).mean(-1, keepdim=True)  # T5LayerNorm: RMS, in fp32
        return (hidden.float() * torch.rsqrt(variance + self.eps)).to(hidden.dtype)

    def __call__(self, hidden: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, q, D) -> K and V (L - start, b, H, q, Dh) of layers start..L-1 (0-based)."""
        lo = start * 2 * self.width
        out = nn.functional.linear(
            self._normalise(hidden), self.weight[lo:], self.bias[lo:]
        )  # (b, q, n*2*HDh)
        b, q = hidden.shape[:2]
        out = out.view(b, q, -1, 2, self.heads, self.width // self.heads).permute(2, 3, 0, 4, 1, 5)
        return out[:, 0], out[:, 1]  # (n, b, H, q, Dh) each


def fill_kv_from(
    state: DecodeState, start: int, hidden: torch.Tensor, rows: torch.Tensor | None = None
) -> None:
    """Fill layers start..L-1 (0-based) at the positions in flight from `hidden` (b, q, D), one matmul."""
    stacked = state.extras.get("stacked_kv")
    if stacked is None:
        stacked = state.extras["stacked_kv"] = stacked_kv(state.backbone)
    if start >= state.num_layers:
        return
    k, v = stacked(hidden, start)
    state.kv.write_layers(start, k.to(hidden.dtype), v.to(hidden.dtype), rows)


def stacked_kv(backbone: Backbone) -> StackedKV:
    """One StackedKV per backbone (built on first use: the folded weights cost one copy of K/V)."""
    cached = getattr(backbone, "_stacked_kv", None)
    if cached is None:
        cached = StackedKV(backbone.lm_type, list(backbone.layers))
        backbone._stacked_kv = cached  # type: ignore[attr-defined]
    return cached


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
