"""`Exits`: the one `ExitMethod` implementation, composed per method rather than subclassed.

An `Exits` holds a method's spec (name, rule, loss functions), its placement and options, and its
parts: an exit module (`LightHeads`, `Generators`, or none = the raw logit lens) and, for adversarial
methods, `Discriminators`. The parts sit in fixed slots whose names are the state-dict prefixes that
saved exits use (`light.`, `generators.`, `discriminators.`): renaming a slot breaks every saved file.

The backbone is a plain attribute, so `state_dict()` and `parameters()` never include backbone
weights. Constructing an `Exits` freezes the backbone (requires_grad=False): every method here trains
exits on a frozen backbone, and gradients must not leak into the shared final norm / LM head.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from free_bench.config import REGIMES
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.methods import rules
from free_bench.methods.heads import Discriminators, ExitModule, Generators, LightHeads
from free_bench.methods.losses import LossInputs
from free_bench.methods.options import parse_placement

if TYPE_CHECKING:
    from free_bench.methods.spec import MethodSpec
    from free_bench.models.base import Backbone
    from free_bench.models.runner_state import Encoded


class Exits(nn.Module):
    """A method's exits at `layers`: `spec` says what it is, the parts what it computes."""

    def __init__(
        self,
        spec: MethodSpec,
        backbone: Backbone,
        layers: tuple[int, ...],
        options: dict[str, Any],
        exit_module: LightHeads | Generators | None = None,
        discriminators: Discriminators | None = None,
    ) -> None:
        super().__init__()
        if (discriminators is not None) != spec.adversarial:
            raise ValueError(f"{spec.name}: discriminators go with a discriminator loss, and only with one")
        self.spec = spec  # plain attribute (a dataclass of functions): never a submodule
        self.backbone = backbone  # plain attribute (a dataclass): never a submodule
        self.layers: tuple[int, ...] = tuple(layers)
        self.options: dict[str, Any] = dict(options)
        # slots in registration order = state-dict order; None slots hold no keys
        self.light: LightHeads | None = exit_module if isinstance(exit_module, LightHeads) else None
        self.generators: Generators | None = exit_module if isinstance(exit_module, Generators) else None
        self.discriminators: Discriminators | None = discriminators
        backbone.model.requires_grad_(False)

    # --- what the spec says ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rule(self) -> str:
        return self.spec.rule

    @property
    def trainable(self) -> bool:
        return self.spec.trainable

    @property
    def adversarial(self) -> bool:
        return self.spec.adversarial

    @property
    def needs_labels_in_semi(self) -> bool:
        return self.spec.needs_labels_in_semi

    @property
    def num_exits(self) -> int:
        return len(self.layers)

    @property
    def exit_module(self) -> ExitModule | None:
        """The part between layer k's output and the head; None = logit lens."""
        return self.light if self.light is not None else self.generators

    def extra_repr(self) -> str:
        return f"name={self.name!r}, rule={self.rule!r}, layers={list(self.layers)}"

    # --- placement ---------------------------------------------------------------------------
    def restrict(self, layers: str | list[int] | tuple[int, ...]) -> Exits:
        """The same trained exits, consulted only at `layers` (a subset of the placement), e.g. a sparse
        inference placement out of a dense training one; the exit modules are shared, not copied."""
        keep = parse_placement(layers, self.backbone.num_layers)
        missing = sorted(set(keep) - set(self.layers))
        if missing:
            raise FreeBenchError(
                f"{self.name}: no trained exit at layer(s) {missing}; exits are at {list(self.layers)}"
            )
        clone = copy.copy(self)
        clone.layers = keep
        return clone

    def exit_position(self, k: int) -> int:
        """Index (0..E-1) of the exit at LM layer k; FreeBenchError if k is not an exit."""
        if k not in self.layers:
            raise FreeBenchError(f"{self.name}: layer {k!r} is not an exit; exits are at {list(self.layers)}")
        return self.layers.index(k)

    # --- exit modules ------------------------------------------------------------------------
    def exit_hidden(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The exit module's hidden-to-hidden part; identity for the logit lens. (B, T, D) -> (B, T, D).
        `encoder`: the T5 prefix's encoder output, which T5 generator exits cross-attend to."""
        module = self.exit_module
        return hidden if module is None else module.exit_hidden(k, hidden, attention_mask, encoder)

    def head_logits(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """The exit's head (frozen final norm + LM head, or its own head). (B, T, D) -> (B, T, V)."""
        module = self.exit_module
        if module is None:
            return self.backbone.logits_from_hidden(hidden)
        return module.head_logits(self.backbone, k, hidden)

    def exit_logits(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Output of LM layer k (B, T, D) -> exit logits (B, T, V); attention_mask (B, T), 1 = real."""
        self.exit_position(k)
        if hidden.dim() != 3:
            raise FreeBenchError(f"exit hidden states must be (B, T, D), got shape {tuple(hidden.shape)}")
        return self.head_logits(k, self.exit_hidden(k, hidden, attention_mask, encoder))

    def exit_modules(self, k: int) -> list[nn.Module]:
        """The modules exit k adds on top of the shared frozen head (for its cost); none = logit lens."""
        module = self.exit_module
        return [] if module is None else module.modules_at(k)

    def all_exit_logits(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Teacher-forced logits of every exit: (L+1, B, T, D) -> (E, B, T, V), for rule simulation."""
        return torch.stack([self.exit_logits(k, hidden_states[k], attention_mask, encoder) for k in self.layers])

    def similarities(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The cosine rule's scores (MuE), as `all_exit_logits` are the logit rules':
        (L+1, ..., D) every layer's hidden states -> (E, ...) cos(h_{k-1}, h_k) at each exit k."""
        return torch.stack([rules.cosine(hidden_states[k - 1], hidden_states[k]) for k in self.layers])

    # --- exit rules --------------------------------------------------------------------------
    def exit_index(self, scores: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Per-exit scores of N tokens, exits in placement order: logits (E, N, V), or for the cosine
        rule the (E, N) `similarities` -> (N,) index of the first exit that fires under this method's
        rule, or E ("none fired: run the full model"). threshold None: the `patience` option."""
        if threshold is None:
            threshold = self.options.get("patience") if self.rule == "patience" else None
        if threshold is None:
            raise FreeBenchError(f"{self.name}: the {self.rule} rule needs a threshold")
        return rules.exit_index(self.rule, scores, threshold, self.layers)

    def exit_index_oracle(
        self, logits: torch.Tensor, final_tokens: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Earliest exit agreeing with the full model's tokens (N,), or with `labels`: earliest correct."""
        return rules.oracle_exit(logits, final_tokens, labels)

    # --- training ----------------------------------------------------------------------------
    def exit_parameters(self) -> list[nn.Parameter]:
        """What `losses` trains: every parameter outside the discriminators (they have their own step)."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminators.")]

    def losses(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> dict[str, torch.Tensor]:
        """Task/generator losses: {"loss": total to backpropagate, other keys: detached terms}.

        hidden_states (L+1, B, T, D); targets (B, T) next-token ids, -100 ignored (semi regime only;
        must be None when unsupervised); mask (B, T) 1 = real token (attention); loss_mask (B, T)
        where unsupervised terms average (default: mask)."""
        if self.spec.losses is None:
            raise FreeBenchError(f"{self.name} exits have nothing to train (trainable=False)")
        loss_mask = self._checked(hidden_states, targets, mask, regime, loss_mask)
        return self.spec.losses(self, LossInputs(hidden_states, targets, mask, regime, loss_mask, encoder))

    def discriminator_loss(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """The adversary's step (adversarial methods): {"loss", "disc", "disc_acc" (E,), "disc_acc@k"}."""
        if self.spec.discriminator_loss is None:
            raise FreeBenchError(f"{self.name} exits have no discriminator (adversarial=False)")
        return self.spec.discriminator_loss(
            self, hidden_states, mask, mask if loss_mask is None else loss_mask, encoder
        )

    def _checked(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Validate a loss call; returns the loss mask (B, T)."""
        check_choice("regime", regime, REGIMES)
        L1, B, T = self.backbone.num_layers + 1, mask.shape[0], mask.shape[-1]
        if hidden_states.dim() != 4 or tuple(hidden_states.shape[:3]) != (L1, B, T):
            raise FreeBenchError(
                f"hidden_states must be (L+1={L1}, B={B}, T={T}, D), got {tuple(hidden_states.shape)}"
            )
        if regime == "unsupervised" and targets is not None:
            raise FreeBenchError("unsupervised regime: targets must be None (the exits never see labels)")
        if regime == "semi" and targets is None and self.needs_labels_in_semi:
            raise FreeBenchError(f"{self.name}: semi-supervised regime needs targets (B, T)")
        if targets is not None and tuple(targets.shape) != (B, T):
            raise FreeBenchError(f"targets must be (B={B}, T={T}), got {tuple(targets.shape)}")
        return mask if loss_mask is None else loss_mask


def logit_lens(
    spec: MethodSpec, backbone: Backbone, layers: tuple[int, ...], options: dict[str, Any]
) -> Exits:
    """Builder of the methods with no exit module (static, oracle, mue): logits = frozen head on h_k."""
    return Exits(spec, backbone, layers, options)
