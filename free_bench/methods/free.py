"""FREE exits: a generator decoder layer per exit, trained adversarially against a per-exit
discriminator that tells final-layer features ("real") from exit features ("fake"), plus a task term.

Training alternates two optimisers: `generator_parameters()` on `losses()` and
`discriminator_parameters()` on `discriminator_loss()`; neither loss leaves gradients in the other's
parameters (the generator step calls D through detached weights; the D step sees detached features).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.func import functional_call

from free_bench.methods import losses as L
from free_bench.methods.heads import Discriminators, GeneratorMethod
from free_bench.methods.registry import register


@register
class FREE(GeneratorMethod):
    """Loss: w_task * task + w_adv * non-saturating -log D(G(h_e)), both averaged over exits.

    task: CE on targets (semi) or T^2 KL(final || exit) (unsupervised). Rule: max prob >= threshold.
    Options: w_task (1.0), w_adv (0.1), temperature (1.0), init_layer ("same"), disc_hidden (None = D)."""

    name = "free"
    rule = "max_prob"
    adversarial = True
    defaults: ClassVar[dict[str, Any]] = {
        **GeneratorMethod.defaults,
        "w_task": 1.0,
        "w_adv": 0.1,
        "disc_hidden": None,
    }

    def __init__(self, backbone: Any, layers: Any, **options: Any) -> None:
        super().__init__(backbone, layers, **options)
        hidden = self.options["disc_hidden"]
        self.discriminators = Discriminators(backbone, self.layers, None if hidden is None else int(hidden))

    def _frozen_d(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """D_e(features) with D's weights detached: the generator step must not train D. -> (B, T)."""
        mlp = self.discriminators.mlps[str(k)]
        params = {n: p.detach() for n, p in mlp.named_parameters()}
        return functional_call(mlp, params, (features,)).squeeze(-1)

    def losses(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        loss_mask = self.check_inputs(hidden_states, targets, mask, regime, loss_mask)
        teacher = self.teacher_logits(hidden_states) if regime == "unsupervised" else None
        temp = self.options["temperature"]
        task, adv = [], []
        for k in self.layers:
            gen = self.exit_hidden(k, hidden_states[k].detach(), mask)  # (B, T, D)
            logits = self.head_logits(k, gen)  # (B, T, V)
            if teacher is None:
                task.append(L.cross_entropy(logits, targets))
            else:
                task.append(L.kl_to_teacher(logits, teacher, loss_mask, temp))
            adv.append(L.bce_with_logits(self._frozen_d(k, self.features(gen)), True, loss_mask))
        task_mean, adv_mean = torch.stack(task).mean(), torch.stack(adv).mean()
        total = self.options["w_task"] * task_mean + self.options["w_adv"] * adv_mean
        return {
            "loss": total,
            "task": task_mean.detach(),
            "adv": adv_mean.detach(),
            **self.per_exit_logs("task", task),
            **self.per_exit_logs("adv", adv),
        }

    def discriminator_loss(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """BCE: real = features of h_L, fake = features of G_e(h_e), both detached; masked token mean.

        Returns {"loss": mean over exits, "disc": detached copy, "disc_acc": (E,) accuracy per exit
        in [0, 1], "disc_acc@k": the same per exit}."""
        loss_mask = mask if loss_mask is None else loss_mask
        with torch.no_grad():
            real = self.features(hidden_states[-1])  # (B, T, F)
            fakes = [self.features(self.exit_hidden(k, hidden_states[k], mask)) for k in self.layers]
        losses, accs = [], []
        for k, fake in zip(self.layers, fakes, strict=True):
            real_logits, fake_logits = self.discriminators(k, real), self.discriminators(k, fake)  # (B, T)
            losses.append(
                L.bce_with_logits(real_logits, True, loss_mask)
                + L.bce_with_logits(fake_logits, False, loss_mask)
            )
            accs.append(L.accuracy(real_logits, fake_logits, loss_mask))
        total = torch.stack(losses).mean()
        return {
            "loss": total,
            "disc": total.detach(),
            "disc_acc": torch.stack(accs),
            **self.per_exit_logs("disc_acc", accs),
        }
