"""Static exit: always leave at layer k (k swept), through the raw logit lens. A reference point."""

from __future__ import annotations

from free_bench.methods.base import ExitMethod
from free_bench.methods.registry import register


@register
class Static(ExitMethod):
    """No parameters; exit logits = final norm + LM head on h_k; `exit_index(logits, k)` -> exit at k."""

    name = "static"
    rule = "static"
    trainable = False
    needs_labels_in_semi = False
