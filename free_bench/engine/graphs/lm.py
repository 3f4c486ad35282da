"""What a graphs decoder needs of its LM family, at fixed shapes: `OPTSteps` and `T5Steps`.

A captured graph replays the same kernels on the same addresses, so a family keeps the step's
positions in device buffers (`position`: the KV slot the token step writes; OPT's `offsets`: each
row's first slot, its left padding) and builds what a layer call needs from them on the device: its
"context" (OPT: the attention mask; T5: the self-attention mask, the relative position bias, the
cross-attention mask and its zero bias). The decoder's segments, exit checks, fills and capture are
family-blind (`graphs.decoder`).

- OPT (decoder-only): the prompt is the first step, q = P positions through every layer; learned
  absolute positions count from each row's first slot.
- T5 (encoder-decoder): the encoder runs once per input over the prompt (replayed as a graph per
  prompt shape once captured) and fills every decoder block's cross-attention K/V (and each generator
  exit's) into fixed buffers of `cross_capacity` encoder slots; the decoder's first step is its start
  token at slot 0, q = 1, as a "prompt" of one position. No padding in the decoder: every row writes
  the same slot.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache

from free_bench.core.errors import FreeBenchError
from free_bench.engine.graphs.capture import Graphed, capture
from free_bench.engine.graphs.fused import FusedOPT
from free_bench.engine.graphs.static import StaticKV, StaticMasks
from free_bench.models import runner_t5
from free_bench.models.base import Backbone
from free_bench.models.runner_state import attention_kind


class OPTSteps:
    """OPT rows left-padded to one prompt length, positions from `StaticMasks`."""

    def __init__(self, backbone: Backbone, capacity: int, batch_size: int, kv: StaticKV,
                 gen_kv: StaticKV | None, fused: FusedOPT | None) -> None:  # fmt: skip
        self.bb, self.kv, self.gen_kv, self.fused = backbone, kv, gen_kv, fused
        self.masks = StaticMasks(backbone, capacity, batch_size)
        self.position = self.masks.position  # (1,) the slot the token step writes
        self.width = backbone.layers[0].self_attn.embed_dim  # D: what a layer reads and writes

    def embed(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, q, D') at slots `positions` (q,) -> layer-1 input (B, q, D)."""
        return self.masks.embed(embeds, positions)

    def context(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The attention mask of the token step (None) or of q positions at slots `positions`."""
        return self.masks.step_mask() if positions is None else self.masks.span_mask(positions)

    def layer(self, j: int, hidden: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Decoder layer j (0-based) on (B, q, D), its K/V written at `kv.index`."""
        if self.fused is not None:
            return self.fused(j, hidden, ctx, self.kv)
        return self.bb.layers[j](hidden, attention_mask=ctx, cache=self.kv)

    def generator(self, block: nn.Module, hidden: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """A FREE/distill generator layer on (B, q, D), with the generators' own K/V."""
        return block(hidden, attention_mask=ctx, cache=self.gen_kv)

    def load(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The bucket's prefix (B, P, D'), mask (B, P): the first step's input (B, P', D') (a lone row
        needs no padding), its rows' offsets set."""
        if embeds.shape[0] == 1:
            keep = mask[0].bool()
            embeds, mask = embeds[:, keep], mask[:, keep]
        length = embeds.shape[1]
        offsets = length - mask.sum(dim=1)  # (B,) left padding
        slots = torch.arange(length, device=mask.device)
        if not bool((mask.bool() == (slots[None, :] >= offsets[:, None])).all()):
            raise FreeBenchError("the graphs engine decodes left-padded prompts (tokenizer.padding_side='left')")
        self.masks.offsets.copy_(offsets)
        return embeds

    def take_rows(self, source: OPTSteps, rows: torch.Tensor) -> None:
        """Bucket row r := `source`'s row rows[r] (B,), between steps."""
        self.masks.offsets.copy_(source.masks.offsets[rows])


class _T5Cache(EncoderDecoderCache):
    """What a T5 block is handed as `cache`: a `StaticKV` for self-attention and fixed cross K/V.

    The parent constructor is skipped (it wants HF cache objects); `is_updated` says every cross K/V
    is computed already, so T5Attention reads them instead of projecting the encoder output, and the
    position bias is always passed, so the sequence length it would derive it from is never read."""

    def __init__(self, self_kv: StaticKV, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.self_attention_cache = self_kv  # type: ignore[assignment]
        layers = [SimpleNamespace(keys=k, values=v) for k, v in zip(keys, values, strict=True)]
        self.cross_attention_cache = SimpleNamespace(layers=layers)  # type: ignore[assignment]
        self.is_updated = dict.fromkeys(range(len(layers)), True)

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return 0


class T5Steps:
    """T5 decoder steps over an encoder output of at most `cross_capacity` positions."""

    def __init__(self, backbone: Backbone, capacity: int, batch_size: int, kv: StaticKV,
                 gen_kv: StaticKV | None, generators: nn.Module | None, cross_capacity: int,
                 capture: bool) -> None:  # fmt: skip
        if backbone.lm_type != "t5":
            raise FreeBenchError(f"T5Steps decodes T5 backbones; {backbone.spec!r} is {backbone.lm_type}")
        self.bb, self.kv, self.gen_kv, self.capacity, self.cross_capacity = backbone, kv, gen_kv, capacity, cross_capacity
        self.batch_size, dev, dtype = batch_size, backbone.device, backbone.dtype
        self.impl = attention_kind(backbone.decoder.config)
        self.width = backbone.lm_config.d_model  # D: what a block reads and writes
        self.keys = torch.arange(capacity, device=dev)  # (C,)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)  # (1,) the slot being decoded
        self.valid = torch.zeros((batch_size, cross_capacity), dtype=torch.bool, device=dev)  # (B, S) encoder slots
        self.bias_attn = backbone.layers[0].layer[0].SelfAttention  # holds the relative position bias
        self.blocks = list(backbone.layers)
        self.gen_blocks = [] if generators is None else list(generators.layers.values())

        def cross_buffers(blocks: list[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            shape = [(batch_size, b.layer[1].EncDecAttention.n_heads, cross_capacity,
                      b.layer[1].EncDecAttention.key_value_proj_dim) for b in blocks]  # fmt: skip
            return ([torch.zeros(s, dtype=dtype, device=dev) for s in shape],
                    [torch.zeros(s, dtype=dtype, device=dev) for s in shape])  # fmt: skip

        self.cross_k, self.cross_v = cross_buffers(self.blocks)  # (B, H, S, Dh) per block
        self.gen_cross_k, self.gen_cross_v = cross_buffers(self.gen_blocks)
        self.encoder_out = torch.zeros((batch_size, cross_capacity, backbone.lm_config.d_model), dtype=dtype,
                                       device=dev)  # (B, S, D): handed to the blocks, read by none  # fmt: skip
        self.cache = _T5Cache(kv, self.cross_k, self.cross_v)
        self.gen_cache = None if gen_kv is None else _T5Cache(gen_kv, self.gen_cross_k, self.gen_cross_v)
        self.encoders: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, Graphed]] = {}
        self.capture = capture  # the encoder replayed as a graph per prompt shape
        start = runner_t5.decoder_start_id(backbone)
        self.start_ids = torch.full((batch_size, 1), start, dtype=torch.long, device=dev)  # (B, 1)

    def _format(self, allowed: torch.Tensor) -> torch.Tensor:
        """Bool mask -> what the attention implementation takes (sdpa: bool; eager: additive)."""
        if self.impl == "sdpa":
            return allowed
        zero = torch.zeros((), dtype=self.bb.dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self.bb.dtype).min)

    def embed(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, q, D) -> block-1 input: positions enter T5 through the bias alone."""
        return self.bb.decoder.dropout(embeds)

    def context(self, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(self mask (1, 1, q, C), relative position bias (1, H, q, C), cross mask (B, 1, 1, S), zero
        cross bias (1, H, q, S)) for the token step (None) or q positions at slots `positions`, as
        `runner_t5.set_masks` builds them for the eager runner."""
        at = self.position if positions is None else positions  # (q,)
        relative = self.keys[None, :] - at[:, None]  # (q, C) memory - query
        attn = self.bias_attn
        buckets = attn._relative_position_bucket(relative, bidirectional=False,
                                                 num_buckets=attn.relative_attention_num_buckets,
                                                 max_distance=attn.relative_attention_max_distance)  # fmt: skip
        bias = attn.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, H, q, C)
        own = self._format((relative <= 0)[None, None])  # (1, 1, q, C) keys up to each query
        cross = self._format(self.valid[:, None, None, :])  # (B, 1, 1, S)
        cross_bias = torch.zeros((1, bias.shape[1], at.shape[0], self.cross_capacity), dtype=bias.dtype,
                                 device=bias.device)  # fmt: skip
        return own, bias, cross, cross_bias

    def _block(self, block: nn.Module, hidden: torch.Tensor, ctx: tuple, cache: _T5Cache) -> torch.Tensor:
        own, bias, cross, cross_bias = ctx
        return block(hidden, own, bias, self.encoder_out, cross, cross_bias, cache=cache)[0]  # (B, q, D)

    def layer(self, j: int, hidden: torch.Tensor, ctx: tuple) -> torch.Tensor:
        return self._block(self.blocks[j], hidden, ctx, self.cache)

    def generator(self, block: nn.Module, hidden: torch.Tensor, ctx: tuple) -> torch.Tensor:
        assert self.gen_cache is not None
        return self._block(block, hidden, ctx, self.gen_cache)

    def load(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the encoder over the bucket's prefix (B, P, D), mask (B, P) (replayed per shape once
        captured), filling every block's cross K/V; the first step's input: the start token (B, 1, D)."""
        P = embeds.shape[1]
        if P > self.cross_capacity:
            raise FreeBenchError(f"a prompt of {P} positions exceeds this T5 decoder's {self.cross_capacity} encoder slots")
        padded = not bool(mask.bool().all())  # as HF's encoder, no mask at all where nothing is padded
        key = (*embeds.shape, padded)
        if key not in self.encoders:
            inputs, pad = torch.zeros_like(embeds), torch.zeros_like(mask)
            graphed = Graphed(lambda: self._encode(inputs, pad, padded))
            if self.capture:
                capture([graphed], warmups=1)
            self.encoders[key] = (inputs, pad, graphed)
        inputs, pad, graphed = self.encoders[key]
        inputs.copy_(embeds)
        pad.copy_(mask)
        graphed.replay()
        return self.bb.embed_tokens(self.start_ids)  # (B, 1, D)

    def _encode(self, embeds: torch.Tensor, mask: torch.Tensor, padded: bool) -> None:
        """The encoder stack's blocks as `T5Stack.forward` runs them, with the mask built here (HF's
        mask helpers test it on the host, which a capture forbids), then every block's cross K/V."""
        stack, P = self.bb.language_model.encoder, embeds.shape[1]
        own = self._format(mask.bool()[:, None, None, :]) if padded else None  # (B, 1, 1, P)
        hidden, bias = stack.dropout(embeds), None  # block 1 computes the relative bias, the rest reuse it
        for block in stack.block:
            hidden, bias, _ = block(hidden, own, bias)  # (B, P, D)
        enc = stack.dropout(stack.final_layer_norm(hidden))  # (B, P, D)
        for blocks, keys, values in ((self.blocks, self.cross_k, self.cross_v),
                                     (self.gen_blocks, self.gen_cross_k, self.gen_cross_v)):  # fmt: skip
            if not blocks:
                continue
            cross = runner_t5.cross_kv(blocks, enc)
            for i in range(len(blocks)):
                keys[i][:, :, :P].copy_(cross.k[i])  # (B, H, P, Dh)
                values[i][:, :, :P].copy_(cross.v[i])
        self.encoder_out[:, :P].copy_(enc)
        self.valid.zero_()
        self.valid[:, :P].copy_(mask.bool())

    def take_rows(self, source: T5Steps, rows: torch.Tensor) -> None:
        """Bucket row r := `source`'s row rows[r] (B,): its encoder slots and cross K/V."""
        self.valid.copy_(source.valid[rows])
        self.encoder_out.copy_(source.encoder_out[rows])
        for mine, theirs in ((self.cross_k, source.cross_k), (self.cross_v, source.cross_v),
                             (self.gen_cross_k, source.gen_cross_k), (self.gen_cross_v, source.gen_cross_v)):  # fmt: skip
            for a, b in zip(mine, theirs, strict=True):
                a.copy_(b[rows])


def lm_steps(backbone: Backbone, capacity: int, batch_size: int, kv: StaticKV, gen_kv: StaticKV | None,
             generators: Any, fused: FusedOPT | None, cross_capacity: int | None,
             capture: bool) -> OPTSteps | T5Steps:  # fmt: skip
    """The family object for `backbone`'s LM (`capture`: T5's encoder as CUDA graphs)."""
    if backbone.lm_type == "t5":
        if fused is not None:
            raise FreeBenchError("fused q/k/v layers are OPT's: a T5 graphs decoder runs its blocks (fuse=False)")
        if cross_capacity is None:
            raise FreeBenchError("a T5 graphs decoder needs cross_capacity: the encoder slots it holds")
        return T5Steps(backbone, capacity, batch_size, kv, gen_kv, generators, cross_capacity, capture)
    return OPTSteps(backbone, capacity, batch_size, kv, gen_kv, fused)
