"""`Backbone`: a BLIP-2 model plus the handles early exits need (decoder layers, final norm, head).

Everything here reads the wrapped HF model's own modules, so an exit head or the logit lens sees
exactly the transformation HF applies after the last decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Blip2ForConditionalGeneration, PreTrainedConfig

from free_bench.config import LM_TYPES
from free_bench.core.errors import FreeBenchError
from free_bench.models.prompts import EMBEDDED, resolve_prompts


@dataclass(eq=False)
class Backbone:
    """A loaded BLIP-2 (OPT or T5 language model) and where it came from.

    `num_layers` counts the LM *decoder* layers (for T5: decoder blocks); layer indices used by
    exits are 1-based: exit point `i` sits right after decoder layer `i` (1 <= i <= num_layers).
    """

    model: Blip2ForConditionalGeneration
    lm_type: str
    num_layers: int
    tokenizer: Any = None
    processor: Any = None
    spec: str = "<in-memory>"
    seed: int = 0  # which pretraining of an embedded profile (part of its identity); 0 otherwise
    prompts: dict[str, str] = field(default_factory=dict)  # task -> prompt (models.prompts); LAVIS's if empty

    def __post_init__(self) -> None:
        if self.lm_type not in LM_TYPES:
            raise FreeBenchError(
                f"unsupported language model {self.lm_type!r}; supported: {', '.join(LM_TYPES)}"
            )
        if self.num_layers != len(self.layers):
            raise FreeBenchError(
                f"num_layers={self.num_layers} but the {self.lm_type} decoder has {len(self.layers)} layers"
            )
        embedded = str(self.spec).startswith("embedded:")  # asked as it was pretrained
        self.prompts = resolve_prompts(self.lm_type, own={**(EMBEDDED if embedded else {}), **self.prompts})

    # --- module accessors -------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    @property
    def lm_config(self) -> PreTrainedConfig:
        """The LM config (OPTConfig / T5Config); T5's decoder stack holds a copy with is_decoder=True."""
        return self.language_model.config

    @property
    def decoder(self) -> nn.Module:
        """OPT: `OPTDecoder`; T5: the decoder `T5Stack`."""
        lm = self.language_model
        return lm.model.decoder if self.lm_type == "opt" else lm.decoder

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order (OPT: `OPTDecoderLayer`, T5: decoder `T5Block`)."""
        dec = self.decoder
        return dec.layers if self.lm_type == "opt" else dec.block

    @property
    def final_norm(self) -> nn.Module | None:
        """Decoder final layer norm; None for OPT configs without one (post-LN OPT-350m style)."""
        return self.decoder.final_layer_norm

    @property
    def lm_head(self) -> nn.Linear:
        return self.language_model.lm_head

    @property
    def embed_tokens(self) -> nn.Embedding:
        """Decoder token embeddings (tied with the LM head in OPT and T5)."""
        return self.decoder.embed_tokens

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    # --- exits --------------------------------------------------------------------------------
    def check_layer(self, i: int) -> int:
        """Return `i` if it names an exit point (1..num_layers), else raise FreeBenchError."""
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= self.num_layers:
            raise FreeBenchError(
                f"layer index {i!r} out of range: exits sit after layers 1..{self.num_layers}"
            )
        return i

    def apply_final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """What HF applies between the last decoder layer and the head. (..., D) -> (..., D_out)."""
        dec = self.decoder
        if self.lm_type == "opt":
            if dec.final_layer_norm is not None:
                hidden = dec.final_layer_norm(hidden)
            if dec.project_out is not None:
                hidden = dec.project_out(hidden)
            return hidden
        hidden = dec.dropout(dec.final_layer_norm(hidden))
        cfg = self.lm_config
        # T5 v1.0 (tied embeddings) rescales before the head, as T5ForConditionalGeneration.forward does.
        if getattr(cfg, "scale_decoder_outputs", getattr(cfg, "tie_word_embeddings", True)):
            hidden = hidden * (self.language_model.model_dim**-0.5)
        return hidden

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on any layer's hidden state (logit lens). (..., D) -> (..., V)."""
        return self.lm_head(self.apply_final_norm(hidden))
