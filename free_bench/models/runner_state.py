"""`DecodeState`: everything the layer-by-layer runner keeps between decoder-layer calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from free_bench.core.errors import FreeBenchError
from free_bench.models.base import Backbone
from free_bench.models.runner_kv import CrossKV, KVStore

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True, eq=False)
class Encoded:
    """A T5 encoder's output over a batch's prefix: what a decoder block cross-attends to."""

    hidden: torch.Tensor  # (B, S, D)
    mask: torch.Tensor  # (B, S) 1 = real


@dataclass(eq=False)
class DecodeState:
    """Decoding state of one batch. Token(s) in flight occupy KV positions [pos, pos + q_len).

    Built by `runner.start` (or `runner.teacher_forced_hidden_states`); advanced by
    `begin_token` -> `step_layers` (any number of calls, any layer ranges / row subsets) -> `end_token`.
    """

    backbone: Backbone
    layers: list[nn.Module]  # plain list: slicing an nn.ModuleList builds a new module every call
    kv: KVStore
    cache: Any  # passed to every layer as `cache=`: the KVStore (OPT) or a T5StepCache
    pad_mask: torch.Tensor  # (B, max_len) bool, True where a KV position holds a real token
    step_masks: torch.Tensor | None  # (B, 1, 1, max_len) one-token mask buffer; None = nothing masked
    q_len: int = 0  # tokens in flight; 0 between end_token and the next begin_token
    self_mask: torch.Tensor | None = None  # (B, 1, q, kv) or None (sdpa is_causal / no padding)
    # OPT
    position_ids: torch.Tensor | None = None  # (B, max_len) learned-position ids, OPT's cumsum formula
    prompt_hidden: torch.Tensor | None = None  # (B, 1, D) last layer at the last prompt position
    # T5
    encoder_hidden: torch.Tensor | None = None  # (B, S, D) encoder output over the prefix
    encoder_mask: torch.Tensor | None = None  # (B, S) encoder padding mask (1 = real)
    cross: CrossKV | None = None
    cross_mask: torch.Tensor | None = None  # (B, 1, q, S) or None
    position_bias: torch.Tensor | None = None  # (1, H, q, kv) relative bias, shared by all blocks
    cross_bias: torch.Tensor | None = None  # (1, H, q, S) zeros, as HF's first block makes them
    start_ids: torch.Tensor | None = None  # (B,) decoder start token
    extras: dict = field(default_factory=dict)  # per-q caches (T5 cross masks/biases)

    @property
    def pos(self) -> int:
        """First KV position of the token(s) in flight (= tokens already in the cache)."""
        return self.kv.pos

    @property
    def batch_size(self) -> int:
        return self.kv.batch_size

    @property
    def max_len(self) -> int:
        return self.kv.max_len

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def attention_kind(config: Any) -> str:
    """The decoder's attention implementation, if the runner's masks match it."""
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        raise FreeBenchError(
            f"attention implementation {impl!r} is not supported by the layer runner; "
            f"load the model with attn_implementation in {SUPPORTED_ATTENTION}"
        )
    return impl


def step_mask_buffer(pad_mask: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor | None:
    """Masks for one-token steps, built once: slicing [..., :kv] gives what HF's mask utilities build.

    HF returns None for sdpa when nothing is padded, a bool (B, 1, 1, kv) mask otherwise, and for
    eager the same as additive 0 / finfo.min (all-zero additive == None, exactly).
    """
    if bool(pad_mask.all()):
        return None
    mask = pad_mask[:, None, None, :]  # (B, 1, 1, max_len)
    if impl == "sdpa":
        return mask
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)
