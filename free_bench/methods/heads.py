"""Exit components shared by several methods: light adapter heads, generator layers, discriminators.

Each container holds one module per exit layer `k` (keys `str(k)`), created on the backbone's device
and dtype so its output can go straight into the backbone's frozen final norm and LM head. The exit
modules (`LightHeads`, `Generators`) share one small interface, `ExitModule`, which is all `Exits`
calls; the logit lens is the absence of one.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.masking_utils import create_causal_mask

from free_bench.core.errors import FreeBenchError
from free_bench.models import runner_t5
from free_bench.models.base import Backbone
from free_bench.models.runner_state import DecodeState, Encoded


class ExitModule(Protocol):
    """What an exit module adds between LM layer k's output and the logits."""

    def exit_hidden(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Hidden-to-hidden part of exit k. (B, T, D) -> (B, T, D); `encoder`: a T5 prefix's output."""
        ...

    def head_logits(self, backbone: Backbone, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Exit k's output (B, T, D) -> logits (B, T, V)."""
        ...

    def modules_at(self, k: int) -> list[nn.Module]:
        """The modules exit k adds on top of the shared frozen head (what its cost counts)."""
        ...


def head_width(backbone: Backbone) -> int:
    """Width of what the LM head reads (after OPT's optional project_out): the feature dimension."""
    return backbone.lm_head.in_features


def hidden_width(backbone: Backbone) -> int:
    """Width of the decoder's residual stream, the hidden states exits read."""
    return int(backbone.lm_config.hidden_size)


class Adapter(nn.Module):
    """`h + tanh(W h + b)` with W, b zero-initialised: exactly the identity (= logit lens) at init.

    A residual, zero-init adapter starts every exit at the backbone's own logit lens instead of a
    random projection, so training only has to learn the correction; tanh bounds that correction.
    """

    def __init__(self, width: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width, device=device, dtype=dtype)
        nn.init.zeros_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + torch.tanh(self.dense(hidden))  # (B, T, D)


class LightHeads(nn.Module):
    """DeeBERT/PABEE exits: adapter per exit, then the frozen final norm and the shared LM head,
    or (own_head=True) the frozen final norm and a per-exit Linear(D, V) copied from the LM head."""

    def __init__(self, backbone: Backbone, layers: tuple[int, ...], own_head: bool) -> None:
        super().__init__()
        dev, dt = backbone.device, backbone.dtype
        self.adapters = nn.ModuleDict({str(k): Adapter(hidden_width(backbone), dev, dt) for k in layers})
        self.heads = nn.ModuleDict()
        if own_head:
            src = backbone.lm_head
            for k in layers:
                head = nn.Linear(
                    src.in_features, src.out_features, bias=src.bias is not None, device=dev, dtype=dt
                )
                with torch.no_grad():
                    head.weight.copy_(src.weight)
                    if src.bias is not None:
                        head.bias.copy_(src.bias)
                self.heads[str(k)] = head

    def exit_hidden(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return self.adapters[str(k)](hidden)  # (B, T, D)

    def head_logits(self, backbone: Backbone, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Adapter output (B, T, D) at exit k -> (B, T, V) through the frozen final norm and the head."""
        features = backbone.apply_final_norm(hidden)  # (B, T, D_out)
        head = self.heads[str(k)] if str(k) in self.heads else backbone.lm_head
        return head(features)

    def modules_at(self, k: int) -> list[nn.Module]:
        own = [self.heads[str(k)]] if str(k) in self.heads else []
        return [self.adapters[str(k)], *own]


def _source_layer(backbone: Backbone, k: int, init_layer: str) -> int:
    """1-based backbone layer a generator at exit k is copied from."""
    return {"same": k, "next": min(k + 1, backbone.num_layers), "last": backbone.num_layers}[init_layer]


class Generators(nn.Module):
    """FREE/distillation exits: per exit one decoder layer of the LM's own class and config (an OPT
    decoder layer, or a T5 decoder block with its cross-attention), deep-copied from a backbone layer
    (trainable copy; the backbone's layer stays frozen).

    A T5 block also reads the encoder output and the decoder's relative position bias: teacher forcing
    passes the `Encoded` prefix (`encoder`), and the bias comes from the backbone's first block, as HF
    shares it; decoding passes what the runner's state holds (`t5_step`)."""

    def __init__(self, backbone: Backbone, layers: tuple[int, ...], init_layer: str) -> None:
        super().__init__()
        if backbone.lm_type not in ("opt", "t5"):
            raise FreeBenchError(f"FREE/distill generator layers need an OPT or T5 backbone, not {backbone.lm_type}")
        self.lm_type = backbone.lm_type
        self.backbone = backbone  # plain attribute (a dataclass): never a submodule
        self.config = backbone.decoder.config
        self.layers = nn.ModuleDict()
        for index, k in enumerate(layers):
            layer = copy.deepcopy(backbone.layers[_source_layer(backbone, k, init_layer) - 1])
            layer.requires_grad_(True)
            # Its own KV slot: an engine can give all generators one KV store with E layers.
            for attn in attention_modules(layer):
                attn.layer_idx = index
            self.layers[str(k)] = layer

    def causal_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The 4D mask HF's OPTDecoder builds for a whole sequence: causal + padding (None = causal only),
        with every position allowed to see itself: a left-padded position sees no key at all, and a
        fully masked row is NaN in some CUDA attention kernels, which a masked mean then carries into
        the loss (NaN * 0 is NaN). Real positions see themselves already: their outputs are unchanged."""
        pad = None if attention_mask is None else attention_mask.to(hidden.device).bool()  # (B, T)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=pad, cache=None)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return mask
        eye = torch.eye(mask.shape[-2], mask.shape[-1], dtype=torch.bool, device=mask.device)  # (T, T)
        if mask.dtype == torch.bool:  # True: may attend
            return mask | eye
        return mask.masked_fill(eye, 0.0)  # additive: 0 where it may attend

    def forward(
        self,
        k: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        mask4d: torch.Tensor | None = None,
        cache: object | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:
        """(B, T, D) output of layer k -> generator output (B, T, D), called as the runner calls its
        layers. Teacher forcing passes the 2D `attention_mask` (and for T5 the `encoder` output);
        decoding an OPT passes `mask4d` and `cache` (T5 decodes through `t5_step`). OPT positions are
        absolute embeddings added before layer 1, so an OPT layer needs no positions."""
        layer = self.layers[str(k)]
        if self.lm_type == "t5":
            if encoder is None:
                raise FreeBenchError("a T5 generator exit reads the encoder output: pass encoder=")
            self_mask, bias, cross_mask, cross_bias = runner_t5.sequence_inputs(
                self.backbone, hidden, attention_mask, encoder.hidden, encoder.mask
            )
            args = (hidden, self_mask, bias, encoder.hidden, cross_mask, cross_bias)
            return _training_attention(lambda: layer(*args)[0], hidden)  # (B, T, D)
        if cache is None and mask4d is None:
            mask4d = self.causal_mask(hidden, attention_mask)
        return _training_attention(lambda: layer(hidden, attention_mask=mask4d, cache=cache), hidden)

    def t5_step(self, k: int, hidden: torch.Tensor, state: DecodeState, self_mask: torch.Tensor | None,
                cross_mask: torch.Tensor | None, cache: object) -> torch.Tensor:  # fmt: skip
        """Exit k's T5 block on the decoding step's positions (b, q, D), with the runner state's bias
        and the generators' own `cache` (self-attention store + their cross K/V)."""
        block = self.layers[str(k)]
        return block(hidden, self_mask, state.position_bias, state.encoder_hidden, cross_mask, state.cross_bias,
                     cache=cache)[0]  # fmt: skip

    def exit_hidden(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return self(k, hidden, attention_mask, encoder=encoder)  # (B, T, D)

    def head_logits(self, backbone: Backbone, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """The shared frozen final norm + LM head. (B, T, D) -> (B, T, V)."""
        return backbone.logits_from_hidden(hidden)

    def modules_at(self, k: int) -> list[nn.Module]:
        return [self.layers[str(k)]]


def attention_modules(layer: nn.Module) -> list[nn.Module]:
    """The attention modules of an OPT layer or a T5 block, whose `layer_idx` picks their cache slot."""
    if hasattr(layer, "self_attn"):
        return [layer.self_attn]
    return [layer.layer[0].SelfAttention, layer.layer[1].EncDecAttention]


def _training_attention(call, hidden: torch.Tensor) -> torch.Tensor:
    """`call()`, under PyTorch's math attention when training on CUDA. The fused CUDA kernel's backward
    returned NaN gradients (forward and loss still finite) at step 7-8 of exit training at OPT-2.7b width
    in bf16 on an H200, where the math kernel's stayed finite on the same batches; its (B, H, T, T)
    scores are small at training lengths. Decoding (no grad) keeps the fused kernel."""
    if torch.is_grad_enabled() and hidden.device.type == "cuda":
        with sdpa_kernel([SDPBackend.MATH]):
            return call()
    return call()


class Discriminators(nn.Module):
    """FREE's per-exit D_e: MLP (F -> H -> 1, LeakyReLU) on token features, logit > 0 means "real"."""

    def __init__(self, backbone: Backbone, layers: tuple[int, ...], hidden: int | None = None) -> None:
        super().__init__()
        width = head_width(backbone)
        inner = hidden or width
        dev, dt = backbone.device, backbone.dtype
        self.mlps = nn.ModuleDict(
            {
                str(k): nn.Sequential(
                    nn.Linear(width, inner, device=dev, dtype=dt),
                    nn.LeakyReLU(0.2),
                    nn.Linear(inner, 1, device=dev, dtype=dt),
                )
                for k in layers
            }
        )

    def forward(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T) logits."""
        return self.mlps[str(k)](features).squeeze(-1)


def features(backbone: Backbone, hidden: torch.Tensor) -> torch.Tensor:
    """What the LM head reads: the frozen final norm of a hidden state. (B, T, D) -> (B, T, F).

    Discriminator and feature-MSE inputs: the raw residual stream of large OPTs has outlier
    dimensions in the hundreds that would dominate an MLP or an MSE; normed features do not."""
    return backbone.apply_final_norm(hidden)
