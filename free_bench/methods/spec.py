"""`MethodSpec`: what one method is (name, rule, option defaults, flags) and how it is built and trained.

Each method file defines one spec and registers it; calling a spec builds the method's `Exits`. The
shared construction steps (placement, option checks) live here, so a builder only composes parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from free_bench.methods.losses import LossInputs
from free_bench.methods.options import parse_placement, resolve_options

if TYPE_CHECKING:
    from free_bench.methods.protocol import ExitMethod
    from free_bench.models.base import Backbone

# (method, one checked batch) -> {"loss": total to backpropagate, other keys: detached terms}
LossFn = Callable[["ExitMethod", LossInputs], dict[str, torch.Tensor]]
# (method, hidden_states (L+1, B, T, D), mask (B, T), loss_mask (B, T))
# (method, hidden states, mask, loss mask, T5 encoder output or None) -> the D step's terms
DiscriminatorLossFn = Callable[
    ["ExitMethod", torch.Tensor, torch.Tensor, torch.Tensor, Any], dict[str, torch.Tensor]
]
# (spec, backbone, placement, resolved options) -> the composed method
Builder = Callable[["MethodSpec", "Backbone", tuple[int, ...], dict[str, Any]], "ExitMethod"]


@dataclass(frozen=True, eq=False)
class MethodSpec:
    """One registered method. `spec(backbone, layers, **options)` builds it.

    `losses` None: nothing to train (static, oracle, mue). `discriminator_loss` set: adversarial, the
    trainer alternates a D step. `needs_labels_in_semi` False: the semi regime may pass no targets."""

    name: str
    rule: str  # one of rules.RULES
    build: Builder
    defaults: Mapping[str, Any] = field(default_factory=dict)
    losses: LossFn | None = None
    discriminator_loss: DiscriminatorLossFn | None = None
    needs_labels_in_semi: bool = True

    @property
    def trainable(self) -> bool:
        return self.losses is not None

    @property
    def adversarial(self) -> bool:
        return self.discriminator_loss is not None

    def __call__(
        self, backbone: Backbone, layers: str | list[int] | tuple[int, ...], **options: Any
    ) -> ExitMethod:
        """Parse the placement, check the options against the defaults, then compose the exits."""
        placement = parse_placement(layers, backbone.num_layers)
        return self.build(self, backbone, placement, resolve_options(self.name, self.defaults, options))
