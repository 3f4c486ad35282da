"""Loss terms shared by the exit methods: token-level terms, always computed in float32 and masked,
and the per-exit task terms several methods' loss functions are built from.

Logits are (B, T, V) with position t predicting token t+1; `targets` (B, T) hold that next token
or -100 (ignored); masks (B, T) are 1 at the positions a term averages over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from free_bench.methods.protocol import ExitMethod
    from free_bench.models.base import Backbone
    from free_bench.models.runner_state import Encoded

IGNORE = -100


@dataclass(frozen=True)
class LossInputs:
    """One checked training batch, as every method's loss function reads it."""

    hidden_states: torch.Tensor  # (L+1, B, T, D) every layer's output, embeddings first
    targets: torch.Tensor | None  # (B, T) next-token ids, -100 ignored; None when unsupervised
    mask: torch.Tensor  # (B, T) 1 = real token (attention)
    regime: str  # semi | unsupervised
    loss_mask: torch.Tensor  # (B, T) where the terms average
    encoder: Encoded | None = None  # T5: the prefix's encoder output (T5 generator exits read it)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T) values over mask == 1; 0 (with grad) when the mask is empty, never NaN."""
    weights = mask.to(values.device, torch.float32)
    return (values.float() * weights).sum() / weights.sum().clamp_min(1.0)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over targets != -100; 0 when there are none."""
    targets = targets.to(logits.device)
    per_token = F.cross_entropy(
        logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)  # (B, T), 0 at ignored positions
    return masked_mean(per_token, targets != IGNORE)


def kl_to_teacher(
    logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || exit) at temperature T, scaled by T^2 (Hinton), averaged over masked positions."""
    log_q = (logits.float() / temperature).log_softmax(dim=-1)  # (B, T, V)
    log_p = (teacher_logits.float() / temperature).log_softmax(dim=-1)
    per_token = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(dim=-1)  # (B, T)
    return masked_mean(per_token, mask) * temperature**2


def feature_mse(features: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per feature, averaged over masked positions. (B, T, F) x2 -> ()."""
    per_token = (features.float() - target.float()).pow(2).mean(dim=-1)  # (B, T)
    return masked_mean(per_token, mask)


def bce_with_logits(logits: torch.Tensor, real: bool, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean BCE of discriminator logits (B, T) against an all-real or all-fake label."""
    labels = torch.full_like(logits, 1.0 if real else 0.0, dtype=torch.float32)
    per_token = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    return masked_mean(per_token, mask)


def accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of (real classified real) and (fake classified fake) over masked positions, in [0, 1]."""
    hits = (real_logits > 0).float() + (fake_logits <= 0).float()  # (B, T) in {0, 1, 2}
    return masked_mean(hits, mask).detach() / 2


# --- per-exit terms, on a method ------------------------------------------------------------------
@torch.no_grad()
def teacher_logits(backbone: Backbone, hidden_states: torch.Tensor) -> torch.Tensor:
    """The full model's logits (B, T, V) from the last layer, detached: the unsupervised target."""
    return backbone.logits_from_hidden(hidden_states[-1]).float()


def task_term(
    logits: torch.Tensor, batch: LossInputs, teacher: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """One exit's task term: CE on the targets (semi) or T^2 KL(final || exit) (unsupervised, where
    `teacher` holds the final layer's logits). logits (B, T, V)."""
    if teacher is None:
        assert batch.targets is not None  # the semi regime's inputs were checked
        return cross_entropy(logits, batch.targets)
    return kl_to_teacher(logits, teacher, batch.loss_mask, temperature)


def unsupervised_teacher(backbone: Backbone, batch: LossInputs) -> torch.Tensor | None:
    """The final layer's logits when the regime learns from them, else None (CE on labels)."""
    return teacher_logits(backbone, batch.hidden_states) if batch.regime == "unsupervised" else None


def task_terms(method: ExitMethod, batch: LossInputs) -> list[torch.Tensor]:
    """Per exit: `task_term` of its logits on the detached hidden state of its layer."""
    teacher = unsupervised_teacher(method.backbone, batch)
    temperature = method.options["temperature"]
    return [
        task_term(
            method.exit_logits(k, batch.hidden_states[k].detach(), batch.mask, batch.encoder), batch, teacher,
            temperature,
        )
        for k in method.layers
    ]


def per_exit(prefix: str, layers: tuple[int, ...], terms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"prefix@k": detached term of exit k} for logging."""
    return {f"{prefix}@{k}": t.detach() for k, t in zip(layers, terms, strict=True)}
