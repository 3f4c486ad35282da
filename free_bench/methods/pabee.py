"""PABEE-style exits: the DeeBERT light heads, trained with deeper exits weighted more, patience rule.

PABEE (Zhou et al., 2020) weights exit i's loss by its depth i: loss = sum_i i * L_i / sum_i i.
PABEE trains the backbone with its heads, where the weights matter. Here the backbone is frozen and
every exit has its own parameters, so the weights only scale each head's gradient by a constant, which
Adam undoes: PABEE-style and DeeBERT-style heads train to the same weights (seen on the cpu profile:
identical per-exit accuracies) and differ in their exit rule alone. Kept as PABEE wrote it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from free_bench.methods.deebert import DeeBERT
from free_bench.methods.registry import register


@register
class PABEE(DeeBERT):
    """Loss: depth-weighted CE / KL. Rule: `rules.patience_exit` (threshold = patience, PABEE's counter).

    Option `patience` is the default threshold when `exit_index` is given threshold=None."""

    name = "pabee"
    rule = "patience"
    defaults: ClassVar[dict[str, Any]] = {**DeeBERT.defaults, "patience": 2}

    def exit_weights(self) -> list[float]:
        total = float(sum(self.layers))
        return [k / total for k in self.layers]

    def exit_index(self, logits: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        return super().exit_index(logits, self.options["patience"] if threshold is None else threshold)
