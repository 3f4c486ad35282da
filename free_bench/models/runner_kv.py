"""Per-layer K/V stores that HF attention modules write into through their usual `cache.update` call.

Why not `DynamicCache`: it grows by `torch.cat` for the whole batch at once, so it cannot take a
write for a subset of rows (an early-exit engine runs deep layers only for the rows that did not
exit). Here each layer owns a preallocated (B, H, max_len, Dh) buffer; the runner sets `pos` (the
KV position being written) and optionally `rows` (a LongTensor of batch rows in flight) before
calling layers, and `update` writes in place and returns views of the filled prefix. All rows
decode in lockstep, so one `pos` serves every row and layer.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import EncoderDecoderCache

from free_bench.core.errors import FreeBenchError


class KVStore:
    """Self-attention K/V of every decoder layer: buffers (B, H, max_len, Dh), allocated on first write."""

    def __init__(self, num_layers: int, batch_size: int, max_len: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        # Every layer's buffer is a view of one (L, B, H, max_len, Dh) tensor, so K/V for a range of
        # layers (an exited token's skipped layers) are written by one indexed copy.
        self.all_keys: torch.Tensor | None = None
        self.all_values: torch.Tensor | None = None
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0  # first KV position of the token(s) in flight
        self.rows: torch.Tensor | None = None  # (b,) batch rows in flight; None = all rows

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        # Zeros, not empty: slots never written (skipped layers) must not inject NaN through 0 * NaN.
        shape = (len(self.keys), self.batch_size, k.shape[1], self.max_len)
        self.all_keys = k.new_zeros((*shape, k.shape[3]))
        self.all_values = v.new_zeros((*shape, v.shape[3]))
        self.keys, self.values = list(self.all_keys.unbind(0)), list(self.all_values.unbind(0))

    def write_layers(
        self, start: int, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """K/V (n, b, H, q, Dh) of layers start..start+n-1 at the current positions, for `rows`."""
        if self.all_keys is None or self.all_values is None:
            self._allocate(keys[0], values[0])
        assert self.all_keys is not None and self.all_values is not None
        end, q = start + keys.shape[0], keys.shape[3]
        if self.pos + q > self.max_len:
            raise FreeBenchError(f"KV store full: position {self.pos + q} > max_len {self.max_len}")
        at = slice(None) if rows is None else rows
        self.all_keys[start:end, at, :, self.pos : self.pos + q] = keys
        self.all_values[start:end, at, :, self.pos : self.pos + q] = values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (b, H, q, Dh) at [rows, :, pos:pos+q]; return this layer's K/V for positions [0, pos+q)."""
        if self.all_keys is None:
            self._allocate(key_states, value_states)
        kb, vb = self.keys[layer_idx], self.values[layer_idx]
        assert kb is not None and vb is not None
        start = self.pos
        end = start + key_states.shape[2]
        if end > self.max_len:
            raise FreeBenchError(f"KV store full: position {end} > max_len {self.max_len}")
        rows = self.rows
        if rows is None:
            kb[:, :, start:end] = key_states
            vb[:, :, start:end] = value_states
            return kb[:, :, :end], vb[:, :, :end]
        kb[rows, :, start:end] = key_states
        vb[rows, :, start:end] = value_states
        return kb[rows, :, :end], vb[rows, :, :end]

    def write(
        self,
        layer_idx: int,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> None:
        """Fill a layer's K/V at the current position without running it (for skipped-layer KV policies)."""
        saved, self.rows = self.rows, rows
        try:
            self.update(key_states, value_states, layer_idx)
        finally:
            self.rows = saved

    # The cache protocol HF's attention and mask utilities read.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.pos

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.pos

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.pos + query_length, 0


class _CrossLayer:
    """One layer's encoder K/V as T5 attention reads it (`.keys`, `.values`), sliced to rows in flight."""

    __slots__ = ("_store", "_idx")

    def __init__(self, store: CrossKV, idx: int) -> None:
        self._store, self._idx = store, idx

    @property
    def keys(self) -> torch.Tensor:  # (b, H, S, Dh)
        k, rows = self._store.k[self._idx], self._store.rows
        return k if rows is None else k[rows]

    @property
    def values(self) -> torch.Tensor:  # (b, H, S, Dh)
        v, rows = self._store.v[self._idx], self._store.rows
        return v if rows is None else v[rows]


class CrossKV:
    """T5 cross-attention K/V over the encoder output: computed once per input, read every step."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        self.k, self.v = k, v  # per layer (B, H, S, Dh)
        self.rows: torch.Tensor | None = None
        self.layers = [_CrossLayer(self, i) for i in range(len(k))]


class T5StepCache(EncoderDecoderCache):
    """What T5 attention is given as `cache`: our self-attention store + precomputed cross K/V.

    Subclassing is needed for T5Attention's `isinstance(cache, EncoderDecoderCache)` branch; the
    parent constructor is skipped on purpose (it insists on HF cache objects), and `is_updated` is
    always true so cross-attention reuses the precomputed encoder K/V instead of recomputing them.
    """

    def __init__(self, self_kv: KVStore, cross_kv: CrossKV) -> None:
        self.self_attention_cache = self_kv  # type: ignore[assignment]
        self.cross_attention_cache = cross_kv  # type: ignore[assignment]
        self.is_updated = dict.fromkeys(range(len(cross_kv.k)), True)
