"""PABEE-style exits: the DeeBERT light heads, trained with deeper exits weighted more, patience rule.

PABEE (Zhou et al., 2020) weights exit i's loss by its depth i: loss = sum_i i * L_i / sum_i i.
PABEE trains the backbone with its heads, where the weights matter. Here the backbone is frozen and
every exit has its own parameters, so the weights only scale each head's gradient by a constant, which
Adam undoes: PABEE-style and DeeBERT-style heads train to the same weights (seen on the cpu profile:
identical per-exit accuracies) and differ in their exit rule alone. Kept as PABEE wrote it.
"""

from __future__ import annotations

import torch

from free_bench.methods import losses as L
from free_bench.methods.deebert import DEEBERT, build_light_heads, weighted_task_losses
from free_bench.methods.protocol import ExitMethod
from free_bench.methods.registry import register
from free_bench.methods.spec import MethodSpec


def depth_weights(layers: tuple[int, ...]) -> list[float]:
    """Exit at layer k weighted k / sum(layers)."""
    total = float(sum(layers))
    return [k / total for k in layers]


def pabee_losses(method: ExitMethod, batch: L.LossInputs) -> dict[str, torch.Tensor]:
    """Depth-weighted CE (semi) or KL to the final layer (unsupervised)."""
    weights = depth_weights(method.layers)
    return weighted_task_losses(method, weights, batch)


PABEE = register(
    MethodSpec(
        name="pabee",
        rule="patience",  # `rules.patience_exit`; threshold None = the `patience` option
        build=build_light_heads,
        defaults={**DEEBERT.defaults, "patience": 2},
        losses=pabee_losses,
    )
)
