"""FREE exits: a generator decoder layer per exit, trained adversarially against a per-exit
discriminator that tells final-layer features ("real") from exit features ("fake"), plus a task term.

Training alternates two optimisers: `exit_parameters()` on `losses()` and the discriminators'
parameters on `discriminator_loss()`; neither loss leaves gradients in the other's parameters (the
generator step calls D through detached weights; the D step sees detached features).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from free_bench.methods import losses as L
from free_bench.methods.exits import Exits
from free_bench.methods.heads import Discriminators, Generators, features
from free_bench.methods.protocol import ExitMethod
from free_bench.methods.registry import register
from free_bench.methods.spec import MethodSpec
from free_bench.models.base import Backbone
from free_bench.models.runner_state import Encoded


def build_free(
    spec: MethodSpec, backbone: Backbone, layers: tuple[int, ...], options: dict[str, Any]
) -> Exits:
    """Generator layers, then the discriminators (in this order: the seed draws D's init after G's copy)."""
    generators = Generators(backbone, layers, options["init_layer"])
    hidden = options["disc_hidden"]
    discriminators = Discriminators(backbone, layers, None if hidden is None else int(hidden))
    return Exits(spec, backbone, layers, options, generators, discriminators)


def _discriminators(method: ExitMethod) -> Discriminators:
    if method.discriminators is None:
        raise ValueError(f"{method.name} has no discriminators")
    return method.discriminators


def _frozen_d(method: ExitMethod, k: int, feats: torch.Tensor) -> torch.Tensor:
    """D_e(features) with D's weights detached: the generator step must not train D. -> (B, T)."""
    mlp = _discriminators(method).mlps[str(k)]
    params = {n: p.detach() for n, p in mlp.named_parameters()}
    return functional_call(mlp, params, (feats,)).squeeze(-1)


def free_losses(method: ExitMethod, batch: L.LossInputs) -> dict[str, torch.Tensor]:
    """w_task * task + w_adv * non-saturating -log D(G(h_e)), both averaged over exits.

    task: CE on targets (semi) or T^2 KL(final || exit) (unsupervised)."""
    teacher = L.unsupervised_teacher(method.backbone, batch)
    temp = method.options["temperature"]
    task, adv = [], []
    for k in method.layers:
        gen = method.exit_hidden(k, batch.hidden_states[k].detach(), batch.mask, batch.encoder)  # (B, T, D)
        task.append(L.task_term(method.head_logits(k, gen), batch, teacher, temp))  # logits (B, T, V)
        fake = _frozen_d(method, k, features(method.backbone, gen))  # (B, T)
        adv.append(L.bce_with_logits(fake, True, batch.loss_mask))
    task_mean, adv_mean = torch.stack(task).mean(), torch.stack(adv).mean()
    total = method.options["w_task"] * task_mean + method.options["w_adv"] * adv_mean
    return {
        "loss": total,
        "task": task_mean.detach(),
        "adv": adv_mean.detach(),
        **L.per_exit("task", method.layers, task),
        **L.per_exit("adv", method.layers, adv),
    }


def free_discriminator_loss(
    method: ExitMethod, hidden_states: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor,
    encoder: Encoded | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """BCE: real = features of h_L, fake = features of G_e(h_e), both detached; masked token mean.

    Returns {"loss": mean over exits, "disc": detached copy, "disc_acc": (E,) accuracy per exit
    in [0, 1], "disc_acc@k": the same per exit}."""
    disc = _discriminators(method)
    with torch.no_grad():
        real = features(method.backbone, hidden_states[-1])  # (B, T, F)
        fakes = [
            features(method.backbone, method.exit_hidden(k, hidden_states[k], mask, encoder)) for k in method.layers
        ]
    losses, accs = [], []
    for k, fake in zip(method.layers, fakes, strict=True):
        real_logits, fake_logits = disc(k, real), disc(k, fake)  # (B, T)
        losses.append(
            L.bce_with_logits(real_logits, True, loss_mask) + L.bce_with_logits(fake_logits, False, loss_mask)
        )
        accs.append(L.accuracy(real_logits, fake_logits, loss_mask))
    total = torch.stack(losses).mean()
    return {
        "loss": total,
        "disc": total.detach(),
        "disc_acc": torch.stack(accs),
        **L.per_exit("disc_acc", method.layers, accs),
    }


FREE = register(
    MethodSpec(
        name="free",
        rule="max_prob",  # exit when max prob >= t
        build=build_free,
        # disc_hidden None: D's hidden width = the feature width
        defaults={"temperature": 1.0, "init_layer": "same", "w_task": 1.0, "w_adv": 0.1, "disc_hidden": None},
        losses=free_losses,
        discriminator_loss=free_discriminator_loss,
    )
)
