"""Self-speculative decoding on the graphs engine: `engine.speculative`'s rounds, replayed as graphs.

The drafts are the decoder's captured token steps (segments between exits, stopping where the rule
fires, K/V of the skipped layers filled under `propagate`); the prompt and each round's verification
are one captured full-depth pass over their q positions (`full_span`, one graph per q),
which rewrites those positions' K/V. The tokens are the full model's whatever the threshold and
`draft_len`, as on the eager engine; the costs and counts are priced the same way.
"""

from __future__ import annotations

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine.graphs.capture import Graphed, capture
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.engine.speculative import accept_round, speculative_fields


def draft(decoder: GraphDecoder, token: int, slot: int) -> dict:
    """One token step of a lone row: `token` in at KV slot `slot`, decided by the exits (what
    `GraphDecoder.advance` returns)."""
    decoder.ids.fill_(token)
    decoder.lm.position.fill_(slot)
    return decoder._finish(decoder.step, None)


def full_span(decoder: GraphDecoder, embeds: torch.Tensor, start: int) -> tuple[list[int], list[float]]:
    """Every layer over q = embeds.shape[1] positions at KV slots start..start+q-1 of a lone row (the
    prompt, or a round's verification), rewriting their K/V: the full model's token and its probability
    after each position. One pass per q, captured on first use (kept in `decoder.spans`)."""
    q = embeds.shape[1]
    if q not in decoder.spans:
        decoder.spans[q] = _span(decoder, q)
    positions, buffer, out, graphed = decoder.spans[q]
    positions.copy_(torch.arange(start, start + q, device=positions.device))
    buffer.copy_(embeds)
    decoder._address(positions)
    graphed.replay()
    tokens, probs = out.tolist()
    return [int(t) for t in tokens[0]], probs[0]


def _span(d: GraphDecoder, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Graphed]:
    bb, dev = d.bb, d.bb.device
    positions = torch.arange(d.capacity - q, d.capacity, device=dev)  # (q,) warmed at the last slots
    buffer = torch.zeros((d.batch_size, q, bb.embed_tokens.embedding_dim), dtype=bb.dtype, device=dev)
    out = torch.zeros((2, d.batch_size, q), dtype=torch.float32, device=dev)  # [token, prob]

    def run() -> None:
        hidden = d.lm.embed(buffer, positions)  # (B, q, D)
        ctx = d.lm.context(positions)  # OPT: (B, 1, q, C) mask; T5: masks and relative bias
        for j in range(bb.num_layers):
            hidden = d.lm.layer(j, hidden, ctx)
        probs, tokens = bb.logits_from_hidden(hidden).float().softmax(-1).max(-1)  # (B, q) each
        out.copy_(torch.stack([tokens.float(), probs]))

    graphed = Graphed(run)
    if d.capture:
        d._address(positions)
        capture([graphed])
    return positions, buffer, out, graphed


@torch.inference_mode()
def speculative_graphs(
    decoder: GraphDecoder,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    *,
    max_new_tokens: int,
    threshold: float,
    draft_len: int,
    eos_ids: list[int],
) -> dict:
    """One row: the fields of a `GenerateResult`, with `speculative` holding the round counts."""
    if decoder.method is None or decoder.policy != "propagate" or decoder.batch_size != 1:
        raise FreeBenchError("speculative decoding on the graphs engine drafts with exits, one row, under propagate")
    if pixel_values.shape[0] != 1:
        raise FreeBenchError(f"speculative decoding runs one row, got a batch of {pixel_values.shape[0]}")
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 1:
        raise FreeBenchError(f"draft_len must be an integer >= 1, got {draft_len!r}")
    bb, L, eos = decoder.bb, decoder.bb.num_layers, set(eos_ids)
    # room for a round's verification inputs beyond the last kept token
    decoder.start(pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens + draft_len + 1,
                  threshold=threshold)  # fmt: skip
    tokens: list[int] = []
    layers: list[int] = []
    confidences: list[float] = []
    spent, passes, drafted, accepted = 0.0, 0, 0, 0
    if bb.lm_type == "t5":  # the decoder starts from its start token, drafted from like any other
        last, slot = int(decoder.lm.start_ids[0, 0]), 0
    else:  # OPT: the prompt, every layer, gives the first token
        full_tokens, full_probs = full_span(decoder, decoder._embeds, 0)
        tokens, layers, confidences = [full_tokens[-1]], [L], [full_probs[-1]]
        spent, last, slot = decoder.cost.full, full_tokens[-1], decoder._length
    while len(tokens) < max_new_tokens and not (tokens and tokens[-1] in eos):
        start = slot  # where `last` goes in
        drafts, draft_layers, draft_probs = [], [], []
        for i in range(min(draft_len, max_new_tokens - len(tokens))):
            step = draft(decoder, last if not drafts else drafts[-1], start + i)
            spent += step["row_costs"][0]
            drafts.append(step["tokens"][0])
            draft_layers.append(step["layers"][0])
            draft_probs.append(float(step["scores"][0]))
            if draft_layers[-1] == L or drafts[-1] in eos:  # unsure (no exit took it), or the answer ended
                break
        ids = torch.tensor([[last, *drafts]], device=bb.device)  # (1, q)
        full_tokens, full_probs = full_span(decoder, bb.embed_tokens(ids), start)  # rewrites their K/V
        new, new_layers, new_probs, keep = accept_round(drafts, draft_layers, draft_probs, full_tokens,
                                                        full_probs, eos, L)  # fmt: skip
        spent += decoder.cost.full
        passes, drafted, accepted = passes + 1, drafted + len(drafts), accepted + keep
        slot = start + len(new)  # the cache is the full model's through the kept inputs
        tokens, layers, confidences = tokens + new, layers + new_layers, confidences + new_probs
        last = tokens[-1]
    return speculative_fields(tokens, layers, confidences, eos, max_new_tokens, spent, decoder.cost.full,
                              (drafted, accepted, passes), bb.device)  # fmt: skip
