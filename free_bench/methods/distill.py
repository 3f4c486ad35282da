"""Distillation-only exits ("LeeBLIP"/KD): FREE's generator exits trained without a discriminator.

The ablation that isolates what FREE's adversarial term adds: same exit module, same rule, but the
only signal is the final layer's token distribution (and optionally its features).
"""

from __future__ import annotations

from typing import Any

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.methods import losses as L
from free_bench.methods.exits import Exits
from free_bench.methods.heads import Generators, features
from free_bench.methods.protocol import ExitMethod
from free_bench.methods.registry import register
from free_bench.methods.spec import MethodSpec
from free_bench.models.base import Backbone


def build_generators(
    spec: MethodSpec, backbone: Backbone, layers: tuple[int, ...], options: dict[str, Any]
) -> Exits:
    """A `Generators` exit module (a decoder layer per exit, copied from `init_layer`), no discriminator."""
    return Exits(spec, backbone, layers, options, Generators(backbone, layers, options["init_layer"]))


def distill_losses(method: ExitMethod, batch: L.LossInputs) -> dict[str, torch.Tensor]:
    """Per exit: T^2 * KL(final_T || exit_T) + w_feat * MSE(features) [+ w_task * CE in semi]."""
    opts = method.options
    w_feat, w_task, temp = opts["w_feat"], opts["w_task"], opts["temperature"]
    use_ce = batch.regime == "semi" and w_task > 0
    if use_ce and batch.targets is None:
        raise FreeBenchError("distill with w_task > 0 needs targets in the semi-supervised regime")
    teacher = L.teacher_logits(method.backbone, batch.hidden_states)  # (B, T, V), detached
    with torch.no_grad():
        real = features(method.backbone, batch.hidden_states[-1]) if w_feat > 0 else None  # (B, T, F)
    kl, feat, ce = [], [], []
    for k in method.layers:
        gen = method.exit_hidden(k, batch.hidden_states[k].detach(), batch.mask, batch.encoder)  # (B, T, D)
        logits = method.head_logits(k, gen)  # (B, T, V)
        kl.append(L.kl_to_teacher(logits, teacher, batch.loss_mask, temp))
        if real is not None:
            feat.append(L.feature_mse(features(method.backbone, gen), real, batch.loss_mask))
        if use_ce:
            assert batch.targets is not None
            ce.append(L.cross_entropy(logits, batch.targets))
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
    return {"loss": total, **out, **L.per_exit("kl", method.layers, kl)}


DISTILL = register(
    MethodSpec(
        name="distill",
        rule="max_prob",  # exit when max prob >= t
        build=build_generators,
        # w_feat 0: no feature term; w_task 0: "distillation-only" (> 0 adds CE on the labels when semi)
        defaults={"temperature": 1.0, "init_layer": "same", "w_feat": 0.0, "w_task": 0.0},
        losses=distill_losses,
        needs_labels_in_semi=False,  # only with w_task > 0
    )
)
