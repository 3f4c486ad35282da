"""OPT (decoder-only) side of the layer runner: the prompt and generated tokens share one KV store."""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from free_bench.core.errors import FreeBenchError
from free_bench.models.base import Backbone
from free_bench.models.runner_kv import KVStore
from free_bench.models.runner_state import DecodeState, attention_kind, step_mask_buffer


def new_state(backbone: Backbone, attention_mask: torch.Tensor, max_len: int) -> DecodeState:
    """State for a prompt with `attention_mask` (B, P) (left padding) and room for `max_len` positions."""
    dec = backbone.decoder
    batch, prompt_len = attention_mask.shape
    limit = backbone.lm_config.max_position_embeddings
    if max_len > limit:
        raise FreeBenchError(f"sequence of {max_len} positions exceeds OPT's max_position_embeddings={limit}")
    pad_mask = torch.ones(batch, max_len, dtype=torch.bool, device=attention_mask.device)  # (B, max_len)
    pad_mask[:, :prompt_len] = attention_mask.bool()
    ones = pad_mask.long()
    # OPTDecoder.forward's own formula (cumsum of the mask), precomputed for every future position.
    position_ids = torch.cumsum(ones, dim=1) * ones - 1  # (B, max_len)
    kv = KVStore(len(backbone.layers), batch, max_len)
    return DecodeState(
        backbone=backbone,
        layers=list(backbone.layers),
        kv=kv,
        cache=kv,
        pad_mask=pad_mask,
        step_masks=step_mask_buffer(pad_mask, attention_kind(dec.config), backbone.dtype),
        position_ids=position_ids,
    )


def begin(state: DecodeState, embeds: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, q, D') of the next q positions -> layer-1 input (B, q, D); set the masks."""
    pos, q = state.pos, embeds.shape[1]
    hidden = layer_input(state.backbone, embeds, state.position_ids[:, pos : pos + q])  # (B, q, D)
    set_masks(state, hidden)
    return hidden


def layer_input(backbone: Backbone, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, q, D') at `position_ids` (B, q) -> layer-1 input (B, q, D), as OPTDecoder adds
    its learned positions."""
    dec = backbone.decoder
    if dec.project_in is not None:
        embeds = dec.project_in(embeds)
    return embeds + dec.embed_positions(None, 0, position_ids=position_ids)


def set_masks(state: DecodeState, hidden: torch.Tensor) -> None:
    """Self-attention mask for the q = hidden.shape[1] positions starting at `state.pos`, all B rows."""
    pos, q = state.pos, hidden.shape[1]
    if q == 1:
        state.self_mask = None if state.step_masks is None else state.step_masks[..., : pos + 1]
    else:
        state.self_mask = create_causal_mask(
            config=state.backbone.decoder.config,
            inputs_embeds=hidden,
            attention_mask=state.pad_mask[:, : pos + q],
            cache=state.kv if pos else None,
        )


def kv_projection(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The K/V an OPTDecoderLayer would cache for `hidden` (b, q, D), without running the layer.

    Same calls as the layer: its pre-attention norm (where the model norms first), then k_proj/v_proj.
    Returns (b, H, q, Dh) each."""
    x = layer.self_attn_layer_norm(hidden) if layer.do_layer_norm_before else hidden
    attn = layer.self_attn
    shape = (*hidden.shape[:2], -1, attn.head_dim)
    return attn.k_proj(x).view(shape).transpose(1, 2), attn.v_proj(x).view(shape).transpose(1, 2)


def run_layers(
    state: DecodeState,
    layers: list[nn.Module],
    hidden: torch.Tensor,
    self_mask: torch.Tensor | None,
    cross_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Call each OPTDecoderLayer in turn; their attention writes K/V through `state.cache`."""
    cache = state.cache
    for layer in layers:
        hidden = layer(hidden, attention_mask=self_mask, cache=cache)  # (b, q, D)
    return hidden
