"""Token-level loss terms shared by the exit methods, always computed in float32 and masked.

Logits are (B, T, V) with position t predicting token t+1; `targets` (B, T) hold that next token
or -100 (ignored); masks (B, T) are 1 at the positions a term averages over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


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
