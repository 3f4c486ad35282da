"""T5 (encoder-decoder) side of the layer runner: encoder once, then decoder blocks one at a time."""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from free_bench.core.errors import FreeBenchError
from free_bench.models.base import Backbone
from free_bench.models.runner_kv import CrossKV, KVStore, T5StepCache
from free_bench.models.runner_state import DecodeState, attention_kind, step_mask_buffer


def new_state(
    backbone: Backbone,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_len: int,
    decoder_mask: torch.Tensor | None = None,
) -> DecodeState:
    """Run the encoder over the prefix (B, S, D) and precompute every block's cross-attention K/V."""
    dec = backbone.decoder
    layers = list(backbone.layers)
    enc = backbone.language_model.encoder(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True
    ).last_hidden_state  # (B, S, D)
    cross = cross_kv(layers, enc)
    batch = enc.shape[0]
    kv = KVStore(len(layers), batch, max_len)
    pad_mask = torch.ones(batch, max_len, dtype=torch.bool, device=enc.device)  # (B, max_len)
    if decoder_mask is not None:
        pad_mask[:, : decoder_mask.shape[1]] = decoder_mask.bool()
    start_id = decoder_start_id(backbone)
    return DecodeState(
        backbone=backbone,
        layers=layers,
        kv=kv,
        cache=T5StepCache(kv, cross),
        pad_mask=pad_mask,
        step_masks=step_mask_buffer(pad_mask, attention_kind(dec.config), backbone.dtype),
        encoder_hidden=enc,
        encoder_mask=attention_mask,
        cross=cross,
        start_ids=torch.full((batch,), start_id, dtype=torch.long, device=enc.device),
    )


def cross_kv(blocks: list[nn.Module], enc: torch.Tensor) -> CrossKV:
    """Each block's cross-attention K/V (B, H, S, Dh) over the encoder output (B, S, D), computed once."""
    keys, values = [], []
    for block in blocks:
        attn = block.layer[1].EncDecAttention
        kv_shape = (*enc.shape[:-1], -1, attn.key_value_proj_dim)  # as T5Attention.forward shapes them
        keys.append(attn.k(enc).view(kv_shape).transpose(1, 2))  # (B, H, S, Dh)
        values.append(attn.v(enc).view(kv_shape).transpose(1, 2))
    return CrossKV(keys, values)


def sequence_inputs(
    backbone: Backbone, hidden: torch.Tensor, decoder_mask: torch.Tensor | None, encoder_hidden: torch.Tensor,
    encoder_mask: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """What a decoder block is handed for a whole sequence (B, T, D) from position 0, without a cache,
    as `set_masks` builds it for decoding: (self mask, relative position bias, cross mask, cross bias)."""
    T = hidden.shape[1]
    attn0 = backbone.layers[0].layer[0].SelfAttention
    bias = attn0.compute_bias(T, T, device=hidden.device, past_seen_tokens=0)  # (1, H, T, T)
    pad = None if decoder_mask is None else decoder_mask.to(hidden.device).bool()
    self_mask = create_causal_mask(config=backbone.decoder.config, inputs_embeds=hidden, attention_mask=pad,
                                   cache=None)  # fmt: skip
    return self_mask, bias, *cross_inputs(backbone, hidden, encoder_hidden, encoder_mask)


def cross_inputs(
    backbone: Backbone, hidden: torch.Tensor, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Cross-attention mask (B, 1, q, S) and zero bias (1, H, q, S) for the q = hidden.shape[1] positions."""
    mask = create_bidirectional_mask(config=backbone.decoder.config, inputs_embeds=hidden,
                                     attention_mask=encoder_mask, encoder_hidden_states=encoder_hidden)  # fmt: skip
    attn = backbone.layers[0].layer[1].EncDecAttention
    # HF's first block makes these zeros (no relative bias in cross-attention) and shares them.
    bias = torch.zeros((1, attn.n_heads, hidden.shape[1], encoder_hidden.shape[1]), device=hidden.device,
                       dtype=attn.q.weight.dtype)  # fmt: skip
    return mask, bias


def decoder_start_id(backbone: Backbone) -> int:
    """The decoder's first input token, chosen as HF generate does: decoder_start_token_id, else bos."""
    gen = backbone.language_model.generation_config
    for value in (gen.decoder_start_token_id, gen.bos_token_id):
        if value is not None:
            return int(value)
    raise FreeBenchError("the T5 generation config has neither decoder_start_token_id nor bos_token_id")


def _cross_inputs(state: DecodeState, hidden: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`cross_inputs` for q = hidden.shape[1] tokens of the state's batch, built once per q."""
    q = hidden.shape[1]
    cached = state.extras.get(("cross", q))
    if cached is None:
        assert state.encoder_hidden is not None
        cached = state.extras[("cross", q)] = cross_inputs(state.backbone, hidden, state.encoder_hidden,
                                                           state.encoder_mask)  # fmt: skip
    return cached


def begin(state: DecodeState, embeds: torch.Tensor) -> torch.Tensor:
    """Decoder token embeddings (B, q, D) -> block-1 input; set masks and the relative position bias."""
    hidden = state.backbone.decoder.dropout(embeds)  # (B, q, D)
    set_masks(state, hidden)
    return hidden


def set_masks(state: DecodeState, hidden: torch.Tensor) -> None:
    """Masks and relative position bias for the q = hidden.shape[1] positions starting at `state.pos`."""
    dec = state.backbone.decoder
    pos, q = state.pos, hidden.shape[1]
    attn0 = state.layers[0].layer[0].SelfAttention
    # What the first block computes when handed position_bias=None; later blocks reuse it.
    state.position_bias = attn0.compute_bias(q, pos + q, device=hidden.device, past_seen_tokens=pos)
    if q == 1:
        state.self_mask = None if state.step_masks is None else state.step_masks[..., : pos + 1]
    else:
        state.self_mask = create_causal_mask(
            config=dec.config,
            inputs_embeds=hidden,
            attention_mask=state.pad_mask[:, : pos + q],
            cache=state.kv if pos else None,
        )
    state.cross_mask, state.cross_bias = _cross_inputs(state, hidden)


def kv_projection(block: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-attention K/V a T5Block would cache for `hidden` (b, q, D), without running it.

    The relative position bias is added to scores, not keys, so K/V depend on the hidden state alone."""
    sa = block.layer[0]
    x = sa.layer_norm(hidden)
    attn = sa.SelfAttention
    shape = (*hidden.shape[:2], -1, attn.key_value_proj_dim)
    return attn.k(x).view(shape).transpose(1, 2), attn.v(x).view(shape).transpose(1, 2)


def run_layers(
    state: DecodeState,
    layers: list[nn.Module],
    hidden: torch.Tensor,
    self_mask: torch.Tensor | None,
    cross_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Call each decoder T5Block in turn (positional args as T5Stack passes them)."""
    cache, bias, enc, cross_bias = state.cache, state.position_bias, state.encoder_hidden, state.cross_bias
    for block in layers:
        hidden = block(hidden, self_mask, bias, enc, cross_mask, cross_bias, cache=cache)[0]  # (b, q, D)
    return hidden
