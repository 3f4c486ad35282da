"""Fixed-shape pieces of the layer runner, for decoding that is captured once as CUDA graphs.

A captured graph replays the same kernels on the same addresses, so nothing a graph reads may
change shape or live in a Python int between tokens: the KV buffers have a fixed capacity C and
attention reads all of it, the position being written is a device tensor (`StaticKV.index`), and
the mask that hides positions not yet written is computed on the device from that position.
Same HF layer calls as `runner` (the layers' attention writes through `cache.update`), so the
tokens are the eager runner's up to the masked-attention kernels.
"""

from __future__ import annotations

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.models import runner_opt
from free_bench.models.base import Backbone
from free_bench.models.runner_state import attention_kind


class StaticKV:
    """K/V of n attention layers, written at the positions in `index`: stacked (n, B, H, C, Dh) buffers,
    or with `separate` one (B, H, C, Dh) buffer per layer.

    Separate buffers are for code that torch.compile traces: a layer's write into a slice of a stacked
    buffer is a mutation of a view of a graph input, which inductor turns into copies of the layer's
    buffer and of the whole stack (H200 profile at commit b33db10: ten copies of the 21 MB stack per token,
    ~0.36 ms of 2.75). A write into a whole input is done in place. The price is paid by `write_layers`,
    one write per layer instead of one for all."""

    def __init__(
        self, num_layers: int, batch_size: int, capacity: int, device: torch.device, separate: bool = False
    ) -> None:
        self.num_layers, self.batch_size, self.capacity = num_layers, batch_size, capacity
        self.separate = separate
        # allocated on first write: (n, B, H, C, Dh), or n x (B, H, C, Dh) when separate
        self.keys: torch.Tensor | list[torch.Tensor] | None = None
        self.values: torch.Tensor | list[torch.Tensor] | None = None
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # (q,) positions being written

    def _allocate(self, like: torch.Tensor) -> None:
        # Zeros, not empty: a slot is always written before it is read, but 0 * NaN would still leak.
        b, h, _, d = like.shape
        if self.separate:
            self.keys = [like.new_zeros((b, h, self.capacity, d)) for _ in range(self.num_layers)]
            self.values = [like.new_zeros((b, h, self.capacity, d)) for _ in range(self.num_layers)]
        else:
            self.keys = like.new_zeros((self.num_layers, b, h, self.capacity, d))
            self.values = like.new_zeros((self.num_layers, b, h, self.capacity, d))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args,
        rows: torch.Tensor | None = None, **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, q, Dh) at `index` (with `rows` (B,) bool: those rows only); return the layer's
        whole (B, H, C, Dh) buffers."""  # fmt: skip
        if self.keys is None:
            self._allocate(key_states)
        assert self.keys is not None and self.values is not None
        if rows is not None:
            keep = ~rows[:, None, None, None]  # (B, 1, 1, 1)
            key_states = torch.where(keep, self.keys[layer_idx].index_select(2, self.index), key_states)
            value_states = torch.where(keep, self.values[layer_idx].index_select(2, self.index), value_states)
        self.keys[layer_idx].index_copy_(2, self.index, key_states)
        self.values[layer_idx].index_copy_(2, self.index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def layer_buffers(self, layer_idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer_idx`'s whole (B, H, C, Dh) K and V buffers, allocated like `like` (B, H, q, Dh)
        on first use; for code that writes them itself (`runner_fused.fused_layer`). Stacked, they are
        views of the stack: fine eagerly, but compiled code would copy the stack back whole, so code
        that torch.compile traces takes `separate` buffers."""
        if self.keys is None:
            self._allocate(like)
        assert self.keys is not None and self.values is not None
        return self.keys[layer_idx], self.values[layer_idx]

    def take_rows(self, source: StaticKV, rows: torch.Tensor) -> None:
        """This cache's first len(rows) rows := `source`'s rows `rows` (b,), every layer: a batch
        compacted into a smaller bucket between steps."""
        assert source.keys is not None and source.values is not None
        if self.keys is None:
            self._allocate(source.keys[0][:1].expand(self.batch_size, -1, -1, -1))
        assert self.keys is not None and self.values is not None
        n = rows.shape[0]
        for j in range(self.num_layers):
            self.keys[j][:n].copy_(source.keys[j].index_select(0, rows))
            self.values[j][:n].copy_(source.values[j].index_select(0, rows))

    def write_layers(
        self, start: int, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """K/V (n', B, H, q, Dh) of layers start..start+n'-1 at `index`, without running them; with
        `rows` (B,) bool, only those rows' entries change (the others keep what their layers wrote)."""
        if self.keys is None:
            self._allocate(keys[0])
        assert self.keys is not None and self.values is not None
        if rows is not None:
            keep = ~rows[:, None, None, None]  # (B, 1, 1, 1)
            old_k = torch.stack([self.keys[start + i].index_select(2, self.index) for i in range(keys.shape[0])])
            old_v = torch.stack([self.values[start + i].index_select(2, self.index) for i in range(keys.shape[0])])
            keys, values = torch.where(keep, old_k, keys), torch.where(keep, old_v, values)
        if self.separate:
            for i in range(keys.shape[0]):
                self.keys[start + i].index_copy_(2, self.index, keys[i])
                self.values[start + i].index_copy_(2, self.index, values[i])
            return
        end = start + keys.shape[0]
        self.keys[start:end].index_copy_(3, self.index, keys)  # type: ignore[union-attr]
        self.values[start:end].index_copy_(3, self.index, values)  # type: ignore[union-attr]


class StaticMasks:
    """Positions and attention masks of B left-padded OPT rows in a fixed capacity C.

    Every row writes the same slot per step (`position`); row r's prompt starts at slot `offsets[r]`
    (its left padding), so its keys are the slots offsets[r]..position and its OPT position is the slot
    minus its offset. Offsets are a device buffer, so one captured graph serves every padding."""

    def __init__(self, backbone: Backbone, capacity: int, batch_size: int = 1) -> None:
        if backbone.lm_type != "opt":
            raise FreeBenchError(
                f"the graphs engine decodes OPT backbones; {backbone.spec!r} is {backbone.lm_type} "
                "(use --engine eager)"
            )
        limit = backbone.lm_config.max_position_embeddings
        if capacity > limit:
            raise FreeBenchError(f"capacity {capacity} exceeds OPT's max_position_embeddings={limit}")
        device = backbone.device
        self.backbone, self.capacity, self.batch_size = backbone, capacity, batch_size
        self.impl = attention_kind(backbone.decoder.config)
        self.dtype = backbone.dtype
        self.keys = torch.arange(capacity, device=device)  # (C,)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # (1,) the slot being decoded
        self.offsets = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,) first prompt slot

    def _format(self, allowed: torch.Tensor) -> torch.Tensor:
        """Bool (B, 1, q, C) -> what the attention implementation takes (sdpa: bool; eager: additive)."""
        if self.impl == "sdpa":
            return allowed
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min)

    def _own(self) -> torch.Tensor:
        return self.keys[None, :] >= self.offsets[:, None]  # (B, C) slots of each row's own sequence

    def step_mask(self) -> torch.Tensor:
        """(B, 1, 1, C): each row's keys up to and including `position` (on the device: graph-safe)."""
        return self._format(((self.keys <= self.position)[None, :] & self._own())[:, None, None, :])

    def span_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, 1, q, C) for q positions at slots `positions` (q,): causal within each row's own slots;
        a padding slot sees itself (a query with no key at all would give NaN)."""
        causal = self.keys[None, :] <= positions[:, None]  # (q, C)
        itself = (self.keys[None, :] == positions[:, None])[None]  # (1, q, C)
        return self._format(((causal[None] & self._own()[:, None, :]) | itself)[:, None])

    def prompt_mask(self, length: int) -> torch.Tensor:
        """(B, 1, P, C): a prompt of P positions at slots 0..P-1."""
        return self.span_mask(torch.arange(length, device=self.keys.device))

    def embed(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, q, D') at slots `positions` (q,) -> layer-1 input (B, q, D), as OPT adds
        its learned positions (each row counting from its own first slot)."""
        ids = (positions[None, :] - self.offsets[:, None]).clamp(min=0)  # (B, q)
        return runner_opt.layer_input(self.backbone, embeds, ids)
