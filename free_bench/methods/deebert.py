"""DeeBERT-style exits ("DeeBLIP"): light adapter heads on a frozen backbone, entropy exit rule.

DeeBERT's second stage: the backbone is frozen and every exit is trained with cross-entropy on the
labels, the exits' losses averaged (each exit is an independent classifier).
"""

from __future__ import annotations

import torch

from free_bench.methods.heads import LightHeadMethod
from free_bench.methods.registry import register


@register
class DeeBERT(LightHeadMethod):
    """Loss: mean over exits of CE (semi) or KL to the final layer (unsupervised). Rule: entropy < t."""

    name = "deebert"
    rule = "entropy"

    def exit_weights(self) -> list[float]:
        return [1.0 / self.num_exits] * self.num_exits

    def losses(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        loss_mask = self.check_inputs(hidden_states, targets, mask, regime, loss_mask)
        terms = self.task_terms(hidden_states, targets, mask, regime, loss_mask)
        total = sum(w * t for w, t in zip(self.exit_weights(), terms, strict=True))
        return {"loss": total, "task": total.detach(), **self.per_exit_logs("task", terms)}
