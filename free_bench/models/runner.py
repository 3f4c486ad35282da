"""Layer-by-layer BLIP-2 language model: the one forward pass shared by generation, exits and logit lens.

It calls HF's own modules (vision tower, Q-Former, projection, encoder, each decoder layer) and only
owns the glue HF keeps inside `forward` loops: masks, positions and a row-addressable KV store.

Protocol for one generated token (all rows in lockstep, one KV position per token):

    state = start_decoding(backbone, pixel_values=..., input_ids=..., max_new_tokens=N)
    h = begin_token(state, token_ids)          # (B, 1, D) input of layer 1
    h = step_layers(state, h, 0, 4)            # layers 1..4 for all rows -> output of layer 4
    h_sub = step_layers(state, h[rows], 4, L, rows=rows)  # layers 5..L for a subset of rows
    end_token(state)                           # the token now occupies its KV position

Between two `step_layers` calls is where exits plug in: `backbone.logits_from_hidden(h)` there is
the logit lens of that layer. Layers a row skips keep zeros at that position of their KV buffer
unless the caller fills them (`state.kv.write`), which is the job of the KV policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.models import runner_opt, runner_t5
from free_bench.models.base import Backbone
from free_bench.models.runner_state import DecodeState, Encoded

_IMPL = {"opt": runner_opt, "t5": runner_t5}


@dataclass(eq=False)
class TeacherForcedOutput:
    """Every layer's hidden states for one teacher-forced pass."""

    hidden_states: torch.Tensor  # (L+1, B, T, D): [0] = layer-1 input, [i] = output of layer i
    attention_mask: torch.Tensor  # (B, T) 1 at real positions
    target_slice: slice  # positions along T whose next-token logits predict `target_ids`
    encoder: Encoded | None = None  # T5: the encoder output the decoder blocks cross-attended to


def image_features(backbone: Backbone, pixel_values: torch.Tensor) -> torch.Tensor:
    """Vision -> Q-Former -> projection (B, Q, D'): HF's `get_image_features`, no host sync (the
    graphs engine captures it)."""
    model = backbone.model
    vision_dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
    pixel_values = pixel_values.to(device=model.vision_model.device, dtype=vision_dtype)
    return model.get_image_features(pixel_values, return_dict=True).pooler_output  # (B, Q, D')


def prefix(
    backbone: Backbone,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision -> Q-Former -> projection, scattered into the image placeholders of `input_ids`
    (`features`: `image_features` already computed, (B, Q, D')).

    Returns the LM input embeddings (B, P, D) and attention mask (B, P), computed with the same
    HF calls as `Blip2ForConditionalGeneration.forward` (`get_image_features`, `get_placeholder_mask`).
    """
    model, cfg = backbone.model, backbone.model.config
    image_token = cfg.image_token_index
    if image_token is None:
        raise FreeBenchError(
            "config.image_token_index is unset: this BLIP-2 predates image placeholder tokens"
        )
    if pixel_values.dim() != 4:
        raise FreeBenchError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    batch, device = pixel_values.shape[0], backbone.device
    if input_ids is None:  # HF generate's default prompt: the placeholders, then BOS (if any)
        bos = cfg.text_config.bos_token_id
        row = [image_token] * cfg.num_query_tokens + ([bos] if bos is not None else [])
        input_ids = torch.tensor([row] * batch, dtype=torch.long)
    if input_ids.dim() != 2 or input_ids.shape[0] != batch:
        raise FreeBenchError(f"input_ids must be (B={batch}, P), got shape {tuple(input_ids.shape)}")
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    if attention_mask.shape != input_ids.shape:
        raise FreeBenchError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape")
    counts = (input_ids == image_token).sum(dim=1).tolist()
    if any(c != cfg.num_query_tokens for c in counts):
        raise FreeBenchError(
            f"each row of input_ids needs exactly {cfg.num_query_tokens} image tokens (id {image_token}); "
            f"got {counts} (Blip2Processor inserts them)"
        )
    if features is None:
        features = image_features(backbone, pixel_values)  # (B, Q, D')
    embeds = model.get_input_embeddings()(input_ids)  # (B, P, D)
    features = features.to(embeds.device, embeds.dtype)  # (B, Q, D)
    placeholders = model.get_placeholder_mask(input_ids, inputs_embeds=embeds)  # (B, P, 1)
    return embeds.masked_scatter(placeholders, features), attention_mask


def new_state(
    backbone: Backbone, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int
) -> DecodeState:
    """Decoding state for a prefix (B, P, D) with room for `max_new_tokens`: T5 runs its encoder over
    the prefix; OPT gets a KV store for prompt + new tokens (the prompt not yet run)."""
    if backbone.lm_type == "t5":
        return runner_t5.new_state(backbone, embeds, mask, max_new_tokens)
    if not bool(mask[:, -1].all()):  # the next token goes right after the last prompt column
        raise FreeBenchError("OPT prompts must be left-padded (tokenizer.padding_side='left')")
    return runner_opt.new_state(backbone, mask, embeds.shape[1] + max_new_tokens)


def start_decoding(
    backbone: Backbone,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
) -> DecodeState:
    """Prefix and prompt work that every token shares, done with every layer.

    OPT: runs the prompt through all layers (filling the KV store); `state.prompt_hidden` (B, 1, D)
    is the last layer at the last prompt position, which predicts the first new token.
    T5: runs the encoder once; the first decoder input is `state.start_ids`.
    """
    embeds, mask = prefix(backbone, pixel_values, input_ids, attention_mask)
    state = new_state(backbone, embeds, mask, max_new_tokens)
    if backbone.lm_type == "t5":
        return state
    hidden = step_layers(state, begin_embeds(state, embeds), 0, state.num_layers)  # (B, P, D)
    end_token(state)
    state.prompt_hidden = hidden[:, -1:]
    return state


def begin_embeds(state: DecodeState, embeds: torch.Tensor) -> torch.Tensor:
    """Put q token embeddings (B, q, D) in flight at positions [pos, pos+q); returns the layer-1 input."""
    if state.q_len:
        raise FreeBenchError("begin_* called twice: call end_token(state) after the previous token")
    q = embeds.shape[1]
    if state.pos + q > state.max_len:
        raise FreeBenchError(f"no room for {q} more tokens: {state.pos} of {state.max_len} positions used")
    hidden = _IMPL[state.backbone.lm_type].begin(state, embeds)
    state.q_len = q
    return hidden


def begin_token(state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
    """Put the next token of every row (B,) in flight; returns the layer-1 input (B, 1, D)."""
    ids = token_ids[:, None] if token_ids.dim() == 1 else token_ids  # (B, q)
    return begin_embeds(state, state.backbone.embed_tokens(ids))


def step_layers(
    state: DecodeState,
    hidden: torch.Tensor,
    start: int,
    end: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run decoder layers start+1..end (0-based slice [start, end)) on the token(s) in flight.

    `hidden` is the input of layer start+1: (B, q, D), or (len(rows), q, D) when `rows` (a LongTensor
    of batch indices) restricts the call to those rows; their K/V are written into their own rows
    of the store. Returns the output of layer `end`, i.e. exit point `end`.
    """
    if not 0 <= start <= end <= len(state.layers):
        raise FreeBenchError(f"layer range [{start}, {end}) outside 0..{len(state.layers)}")
    if not state.q_len:
        raise FreeBenchError("no token in flight: call begin_token(state, ids) first")
    run = _IMPL[state.backbone.lm_type].run_layers
    if rows is None:
        return run(state, state.layers[start:end], hidden, state.self_mask, state.cross_mask)
    self_mask = None if state.self_mask is None else state.self_mask[rows]
    cross_mask = None if state.cross_mask is None else state.cross_mask[rows]
    state.kv.rows = rows
    if state.cross is not None:
        state.cross.rows = rows
    try:
        return run(state, state.layers[start:end], hidden, self_mask, cross_mask)
    finally:
        state.kv.rows = None
        if state.cross is not None:
            state.cross.rows = None


def end_token(state: DecodeState) -> None:
    """The token(s) in flight now occupy their KV positions; the next begin_* writes after them."""
    state.kv.pos += state.q_len
    state.q_len = 0
    state.self_mask = None


def teacher_forced_hidden_states(
    backbone: Backbone,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    *,
    target_ids: torch.Tensor | None = None,
    target_attention_mask: torch.Tensor | None = None,
    decoder_input_ids: torch.Tensor | None = None,
) -> TeacherForcedOutput:
    """Every layer's hidden states over prompt + targets, through the same layer calls as decoding.

    OPT: T spans the prompt then `target_ids` (B, Tt), `target_attention_mask` masks the targets.
    T5: T spans the decoder inputs: `decoder_input_ids`, or `target_ids` shifted right as HF does;
    `target_attention_mask` is then HF's `decoder_attention_mask`. Gradients flow unless the caller
    wraps this in `torch.no_grad()`.
    """
    if backbone.lm_type == "opt":
        if decoder_input_ids is not None:
            raise FreeBenchError("OPT has no decoder inputs: pass the continuation as target_ids")
        embeds, mask = prefix(backbone, pixel_values, input_ids, attention_mask)  # (B, P, D), (B, P)
        prompt_len = embeds.shape[1]
        if target_ids is not None:  # embedded apart: an image-token id among targets is just a token
            target_ids = target_ids.to(mask.device)
            tmask = torch.ones_like(target_ids) if target_attention_mask is None else target_attention_mask
            embeds = torch.cat([embeds, backbone.embed_tokens(target_ids)], dim=1)  # (B, T, D)
            mask = torch.cat([mask, tmask.to(mask)], dim=1)  # (B, T)
        total = embeds.shape[1]
        state = runner_opt.new_state(backbone, mask, total)
        targets = slice(prompt_len - 1, total - 1) if target_ids is not None else slice(0, total)
    else:
        if decoder_input_ids is None:
            if target_ids is None:
                raise FreeBenchError("T5 teacher forcing needs target_ids or decoder_input_ids")
            decoder_input_ids = backbone.language_model._shift_right(target_ids)
        decoder_input_ids = decoder_input_ids.to(backbone.device)
        prompt, prompt_mask = prefix(backbone, pixel_values, input_ids, attention_mask)
        dmask = None if target_attention_mask is None else target_attention_mask.to(backbone.device)
        state = runner_t5.new_state(backbone, prompt, prompt_mask, decoder_input_ids.shape[1], dmask)
        embeds = backbone.embed_tokens(decoder_input_ids)  # (B, T, D)
        mask = state.pad_mask.long()
        targets = slice(0, decoder_input_ids.shape[1])
    hidden = begin_embeds(state, embeds)
    states = [hidden]
    for i in range(state.num_layers):
        hidden = step_layers(state, hidden, i, i + 1)
        states.append(hidden)
    end_token(state)
    dtype = reduce(torch.promote_types, (h.dtype for h in states))  # T5 keeps `wo` in fp32
    encoded = None if state.encoder_hidden is None else Encoded(state.encoder_hidden, state.encoder_mask)
    return TeacherForcedOutput(torch.stack([h.to(dtype) for h in states]), mask, targets, encoded)


def first_answer_pass(
    backbone: Backbone, pixel_values: torch.Tensor, prompts: dict[str, torch.Tensor]
) -> tuple[TeacherForcedOutput, int]:
    """Teacher-forced pass over VQA prompts, and the position whose logits give the first answer token:
    OPT, the last prompt position (left padding); T5, the first decoder position (decoder start)."""
    if backbone.lm_type == "opt":
        return teacher_forced_hidden_states(backbone, pixel_values, **prompts), -1
    start = backbone.language_model.config.decoder_start_token_id
    dec = torch.full((pixel_values.shape[0], 1), start, dtype=torch.long, device=backbone.device)
    return teacher_forced_hidden_states(backbone, pixel_values, **prompts, decoder_input_ids=dec), 0
