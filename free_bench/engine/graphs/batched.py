"""Batches on the graphs engine: one decoder per bucket (1, 2, 4, ... rows, each captured once), every
row leaving at its own exit.

Within a step, rows that exited ride along in their bucket until the deepest row has decided: at
batch-1 widths a layer costs about the same for 1 or 64 rows (it is bound by reading its weights, or
by launches), so leaving the bucket mid-step would save little and would need every deeper layer's K/V
gathered per row. Between steps, rows that finished (EOS) leave: with `compact`, once the rows still
decoding fit a smaller bucket they move into it (their K/V copied once), so the steps after pay that
bucket's attention and activations; without, they stay to the end. Which pays is measured
(tests/benchmarks/bench_engine.py), not assumed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from free_bench.engine.graphs.accounting import Collected
from free_bench.engine.graphs.decoder import GraphDecoder


def bucket(rows: int) -> int:
    """The bucket a batch of `rows` decodes in: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


@torch.inference_mode()
def decode_batch(
    decoder_for: Callable[[int], GraphDecoder],
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    *,
    max_new_tokens: int,
    threshold: float | None,
    eos_ids: list[int],
    pad_id: int,
    compact: bool = True,
) -> dict:
    """n rows through `decoder_for(bucket)`'s decoders: the fields of a `GenerateResult`, per-row and
    batch costs included."""
    n = pixel_values.shape[0]
    decoder = decoder_for(bucket(n))
    decoder.start(pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens, threshold=threshold)
    out = Collected(n, max_new_tokens, decoder.cost.full, eos_ids, pad_id, pixel_values.device)
    where = list(range(n)) + [-1] * (decoder.batch_size - n)  # bucket row -> output row
    for _ in range(max_new_tokens):
        step = decoder.advance()
        decoder.finish_rows(out.record(step, where))
        live = decoder.live_rows
        if not live:
            break
        if compact and bucket(len(live)) < decoder.batch_size:
            smaller = decoder_for(bucket(len(live)))
            smaller.adopt(decoder, live)
            where = [where[b] for b in live] + [-1] * (smaller.batch_size - len(live))
            decoder = smaller
    return out.fields()
