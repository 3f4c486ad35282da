"""DeeBERT-style exits ("DeeBLIP"): light adapter heads on a frozen backbone, entropy exit rule.

DeeBERT's second stage: the backbone is frozen and every exit is trained with cross-entropy on the
labels, the exits' losses averaged (each exit is an independent classifier).
"""

from __future__ import annotations

from typing import Any

import torch

from free_bench.methods import losses as L
from free_bench.methods.exits import Exits
from free_bench.methods.heads import LightHeads
from free_bench.methods.protocol import ExitMethod
from free_bench.methods.registry import register
from free_bench.methods.spec import MethodSpec
from free_bench.models.base import Backbone


def build_light_heads(
    spec: MethodSpec, backbone: Backbone, layers: tuple[int, ...], options: dict[str, Any]
) -> Exits:
    """A `LightHeads` exit module (adapter per exit, optionally its own LM head copy): DeeBERT, PABEE."""
    return Exits(spec, backbone, layers, options, LightHeads(backbone, layers, options["own_head"]))


def weighted_task_losses(
    method: ExitMethod, weights: list[float], batch: L.LossInputs
) -> dict[str, torch.Tensor]:
    """sum_e weights[e] * task_e, task = CE (semi) or T^2 KL to the final layer (unsupervised)."""
    terms = L.task_terms(method, batch)
    total = sum(w * t for w, t in zip(weights, terms, strict=True))
    assert isinstance(total, torch.Tensor)  # at least one exit
    return {"loss": total, "task": total.detach(), **L.per_exit("task", method.layers, terms)}


def deebert_losses(method: ExitMethod, batch: L.LossInputs) -> dict[str, torch.Tensor]:
    """Mean over exits of CE (semi) or KL to the final layer (unsupervised)."""
    weights = [1.0 / method.num_exits] * method.num_exits
    return weighted_task_losses(method, weights, batch)


DEEBERT = register(
    MethodSpec(
        name="deebert",
        rule="entropy",  # exit when entropy < t
        build=build_light_heads,
        defaults={"own_head": False, "temperature": 1.0},
        losses=deebert_losses,
    )
)
