"""Oracle exit: the earliest exit whose logit-lens token equals the full model's (or the correct
token): the ceiling any causal exit rule is measured against. A reference point."""

from __future__ import annotations

import torch

from free_bench.errors import FreeBenchError
from free_bench.methods.base import ExitMethod
from free_bench.methods.registry import register


@register
class Oracle(ExitMethod):
    """No parameters; exit logits = raw logit lens. Use `exit_index_oracle(logits, final_tokens, labels)`."""

    name = "oracle"
    rule = "oracle"
    trainable = False
    needs_labels_in_semi = False

    def exit_index(self, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        raise FreeBenchError(
            "the oracle rule has no threshold: it needs the full model's tokens; "
            "call exit_index_oracle(logits, final_tokens, labels=None)"
        )
