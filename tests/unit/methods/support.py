"""Helpers of the exit-method tests (their fixtures are in conftest.py)."""

from __future__ import annotations

import torch

from free_bench.methods import ExitMethod
from free_bench.models import Backbone
from free_bench.models.runner import teacher_forced_hidden_states
from free_bench.models.tiny import tiny_inputs

TRAINABLE = ("free", "deebert", "pabee", "distill")


def _batch(bb: Backbone, seed: int = 3) -> dict[str, torch.Tensor]:
    """Teacher-forced hidden states (L+1, B, T, D), mask (B, T) and next-token targets (B, T)."""
    inputs = tiny_inputs(bb.model, 3, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    target_ids = torch.randint(4, 90, (3, 5), generator=gen)
    tmask = torch.ones_like(target_ids)
    tmask[2, 3:] = 0  # a shorter target row
    with torch.no_grad():
        out = teacher_forced_hidden_states(bb, **inputs, target_ids=target_ids, target_attention_mask=tmask)
    mask = out.attention_mask
    targets = torch.full(mask.shape, -100, dtype=torch.long)
    targets[:, out.target_slice] = target_ids.masked_fill(tmask == 0, -100)
    return {"hidden": out.hidden_states, "mask": mask, "targets": targets, "encoder": out.encoder}

def _disc_params(method: ExitMethod) -> list[torch.nn.Parameter]:
    return [] if method.discriminators is None else list(method.discriminators.parameters())

def _perturb(method: ExitMethod, seed: int = 0) -> None:
    """Move exit weights off their init so round-trip tests compare something non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))

def _from_probs(probs: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(probs).log()  # (E, N, V)

def _from_tokens(tokens: list[list[int]], vocab: int = 8) -> torch.Tensor:
    return 10.0 * torch.nn.functional.one_hot(torch.tensor(tokens), vocab).float()  # (E, N, V)
