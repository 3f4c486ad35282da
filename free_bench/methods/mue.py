"""MuE-style exit (Tang et al., 2023): leave when a layer barely changes the hidden state, i.e. the
cosine similarity of consecutive layers' hidden states reaches a threshold. No heads, no training:
the exit's logits are the raw logit lens. An extra the paper compares against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from free_bench.errors import FreeBenchError
from free_bench.methods import rules
from free_bench.methods.base import ExitMethod
from free_bench.methods.registry import register


def cosine(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """(..., D) input and output of layer k -> (...) cosine similarity, in float32."""
    return F.cosine_similarity(previous.float(), current.float(), dim=-1)


@register
class MuE(ExitMethod):
    """Rule "cosine": `exit_index(similarities (E, N), threshold)`, similarities from `similarities`."""

    name = "mue"
    rule = "cosine"
    trainable = False
    needs_labels_in_semi = False

    def similarities(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(L+1, ..., D) every layer's hidden states -> (E, ...) cos(h_{k-1}, h_k) at each exit k."""
        return torch.stack([cosine(hidden_states[k - 1], hidden_states[k]) for k in self.layers])

    def exit_index(self, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        """Here `logits` are the (E, N) similarities (MuE reads hidden states, not logits)."""
        if logits.dim() != 2:
            raise FreeBenchError(
                f"mue decides on (E, N) cosine similarities from MuE.similarities(), got shape {tuple(logits.shape)}"
            )
        return rules.cosine_exit(logits, threshold)
