"""Distillation-only exits ("LeeBLIP"/KD): FREE's generator exits trained without a discriminator.

The ablation that isolates what FREE's adversarial term adds: same exit module, same rule, but the
only signal is the final layer's token distribution (and optionally its features).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from free_bench.errors import FreeBenchError
from free_bench.methods import losses as L
from free_bench.methods.heads import GeneratorMethod
from free_bench.methods.registry import register


@register
class Distill(GeneratorMethod):
    """Loss per exit: T^2 * KL(final_T || exit_T) + w_feat * MSE(features) [+ w_task * CE in semi].

    Options: temperature (1.0), w_feat (0: no feature term), w_task (0: "distillation-only"; > 0
    adds CE on the labels in the semi-supervised regime), init_layer ("same": copy of layer k)."""

    name = "distill"
    rule = "max_prob"
    needs_labels_in_semi = False  # only with w_task > 0
    defaults: ClassVar[dict[str, Any]] = {**GeneratorMethod.defaults, "w_feat": 0.0, "w_task": 0.0}

    def losses(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        loss_mask = self.check_inputs(hidden_states, targets, mask, regime, loss_mask)
        w_feat, w_task, temp = self.options["w_feat"], self.options["w_task"], self.options["temperature"]
        use_ce = regime == "semi" and w_task > 0
        if use_ce and targets is None:
            raise FreeBenchError("distill with w_task > 0 needs targets in the semi-supervised regime")
        teacher = self.teacher_logits(hidden_states)  # (B, T, V), detached
        with torch.no_grad():
            real = self.features(hidden_states[-1]) if w_feat > 0 else None  # (B, T, F)
        kl, feat, ce = [], [], []
        for k in self.layers:
            gen = self.exit_hidden(k, hidden_states[k].detach(), mask)  # (B, T, D)
            logits = self.head_logits(k, gen)  # (B, T, V)
            kl.append(L.kl_to_teacher(logits, teacher, loss_mask, temp))
            if real is not None:
                feat.append(L.feature_mse(self.features(gen), real, loss_mask))
            if use_ce:
                ce.append(L.cross_entropy(logits, targets))
        out: dict[str, torch.Tensor] = {}
        total = torch.stack(kl).mean()
        out["kl"] = total.detach()
        if feat:
            out["feat"] = torch.stack(feat).mean()
            total = total + w_feat * out["feat"]
        if ce:
            out["task"] = torch.stack(ce).mean()
            total = total + w_task * out["task"]
        out = {k: v.detach() for k, v in out.items()}
        return {"loss": total, **out, **self.per_exit_logs("kl", kl)}
