"""`ExitMethod`: the exit modules of one method at a set of LM layers, their losses and exit rule.

A method object holds only its exit modules as submodules; the backbone is a plain attribute, so
`state_dict()`, `parameters()` and `save()` never include backbone weights. Constructing a method
freezes the backbone (requires_grad=False): every method here trains exits on a frozen backbone,
and gradients must not leak into the shared final norm / LM head the exits route through.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from free_bench.backbone.base import Backbone
from free_bench.errors import FreeBenchError, check_choice
from free_bench.methods import losses as L
from free_bench.methods import rules

REGIMES = ("semi", "unsupervised")
INIT_LAYERS = ("same", "next", "last")


def parse_placement(spec: str | list[int] | tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Exit layers (1-based, ascending) from [4, 8], "4,8", "every:4" (4, 8, ... <= L) or "all".

    The last layer is not added implicitly: "every:3" on 8 layers is (3, 6).
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(1, num_layers + 1))
        if text.startswith("every:"):
            step = text.split(":", 1)[1].strip()
            if not step.lstrip("-").isdigit() or int(step) < 1:
                raise FreeBenchError(f"placement {spec!r}: 'every:k' needs an integer k >= 1, got {step!r}")
            values: list[Any] = list(range(int(step), num_layers + 1, int(step)))
            if not values:
                raise FreeBenchError(f"placement {spec!r} is empty: k={step} > {num_layers} layers")
        else:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            bad = [p for p in parts if not p.lstrip("-").isdigit()]
            if bad:
                raise FreeBenchError(
                    f"placement {spec!r}: {bad[0]!r} is not a layer index; use e.g. '4,8', 'every:4' or 'all'"
                )
            values = [int(p) for p in parts]
    elif isinstance(spec, (list, tuple)):
        values = [_as_int(v) for v in spec]
    else:
        raise FreeBenchError(f"placement must be a list of layer indices or a string, got {spec!r}")
    if not values:
        raise FreeBenchError(f"placement {spec!r} is empty: give at least one exit layer in 1..{num_layers}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= num_layers:
            raise FreeBenchError(f"placement {spec!r}: layer {v!r} is outside 1..{num_layers}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise FreeBenchError(f"placement {spec!r}: layer(s) {repeated} repeated")
    return tuple(sorted(values))


def _as_int(value: Any) -> Any:
    """Integer-like values (numpy/torch ints) as int; anything else unchanged, for the range check."""
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def check_option(method: str, key: str, value: Any) -> Any:
    """Validate one option value by its name's convention; returns the normalised value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "patience":
        return rules.check_patience(value)
    if key == "temperature" and not (number and value > 0):
        raise FreeBenchError(f"{method}: temperature must be a number > 0, got {value!r}")
    if key.startswith("w_") and not (number and value >= 0):
        raise FreeBenchError(f"{method}: loss weight {key} must be a number >= 0, got {value!r}")
    if key == "own_head" and not isinstance(value, bool):
        raise FreeBenchError(f"{method}: own_head must be true or false, got {value!r}")
    if key == "init_layer":
        check_choice("init_layer", value, INIT_LAYERS)
    if key == "disc_hidden" and value is not None and (not number or value != int(value) or value < 1):
        raise FreeBenchError(f"{method}: disc_hidden must be an integer >= 1, got {value!r}")
    return float(value) if key == "temperature" or key.startswith("w_") else value


class ExitMethod(nn.Module):
    """Base of every exit method. Subclasses set the class attributes and override the exit module
    (`exit_hidden`, `head_logits`) and `losses`; the default exit is the raw logit lens."""

    name: ClassVar[str] = ""
    rule: ClassVar[str] = "max_prob"  # one of rules.RULES
    trainable: ClassVar[bool] = True
    needs_labels_in_semi: ClassVar[bool] = True
    adversarial: ClassVar[bool] = False  # has a discriminator (alternating optimisers)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: Backbone, layers: str | list[int] | tuple[int, ...], **options: Any) -> None:
        super().__init__()
        self.backbone = backbone  # plain attribute (a dataclass): never a submodule
        self.layers: tuple[int, ...] = parse_placement(layers, backbone.num_layers)
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise FreeBenchError(f"{self.name}: unknown option(s) {unknown}; valid options: {valid}")
        merged = {**self.defaults, **options}
        self.options: dict[str, Any] = {k: check_option(self.name, k, v) for k, v in merged.items()}
        backbone.model.requires_grad_(False)

    @property
    def num_exits(self) -> int:
        return len(self.layers)

    def restrict(self, layers: str | list[int] | tuple[int, ...]) -> ExitMethod:
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
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The exit module's hidden-to-hidden part; identity here (logit lens). (B, T, D) -> (B, T, D)."""
        return hidden

    def head_logits(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Frozen final norm + LM head. (B, T, D) -> (B, T, V)."""
        return self.backbone.logits_from_hidden(hidden)

    def exit_logits(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output of LM layer k (B, T, D) -> exit logits (B, T, V); attention_mask (B, T), 1 = real."""
        self.exit_position(k)
        if hidden.dim() != 3:
            raise FreeBenchError(f"exit hidden states must be (B, T, D), got shape {tuple(hidden.shape)}")
        return self.head_logits(k, self.exit_hidden(k, hidden, attention_mask))

    def exit_modules(self, k: int) -> list[nn.Module]:
        """The modules exit k adds on top of the shared frozen head (for its cost); none = logit lens."""
        return []

    def all_exit_logits(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits of every exit: (L+1, B, T, D) -> (E, B, T, V), for rule simulation."""
        return torch.stack([self.exit_logits(k, hidden_states[k], attention_mask) for k in self.layers])

    # --- exit rules --------------------------------------------------------------------------
    def exit_index(self, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        """Per-exit logits (E, N, V) of N tokens, exits in placement order -> (N,) index of the first
        exit that fires under this method's rule, or E ("none fired: run the full model")."""
        if self.rule == "max_prob":
            return rules.max_prob_exit(logits, threshold)
        if self.rule == "entropy":
            return rules.entropy_exit(logits, threshold)
        if self.rule == "patience":
            return rules.patience_exit(logits, threshold)
        if self.rule == "static":
            return rules.static_exit(self.layers, threshold, logits.shape[0], logits.shape[1]).to(
                logits.device
            )
        raise FreeBenchError(
            f"{self.name}: rule {self.rule!r} has no threshold form; see its exit_index_* methods"
        )

    def exit_index_oracle(
        self, logits: torch.Tensor, final_tokens: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Earliest exit agreeing with the full model's tokens (N,), or with `labels`: earliest correct."""
        return rules.oracle_exit(logits, final_tokens, labels)

    # --- training ----------------------------------------------------------------------------
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the task/generator loss updates (all but the discriminators)."""
        return iter([p for n, p in self.named_parameters() if not n.startswith("discriminators.")])

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return iter([p for n, p in self.named_parameters() if n.startswith("discriminators.")])

    def losses(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Task/generator losses: {"loss": total to backpropagate, other keys: detached terms}.

        hidden_states (L+1, B, T, D); targets (B, T) next-token ids, -100 ignored (semi regime only;
        must be None when unsupervised); mask (B, T) 1 = real token (attention); loss_mask (B, T)
        where unsupervised terms average (default: mask)."""
        raise FreeBenchError(f"{self.name} exits have nothing to train (trainable=False)")

    def check_inputs(
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

    @torch.no_grad()
    def teacher_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The full model's logits (B, T, V) from the last layer, detached: the unsupervised target."""
        return self.backbone.logits_from_hidden(hidden_states[-1]).float()

    def task_terms(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Per exit: CE on targets (semi) or KL(final || exit) at the temperature (unsupervised)."""
        teacher = self.teacher_logits(hidden_states) if regime == "unsupervised" else None
        terms = []
        for k in self.layers:
            logits = self.exit_logits(k, hidden_states[k].detach(), mask)  # (B, T, V)
            if teacher is None:
                terms.append(L.cross_entropy(logits, targets))
            else:
                terms.append(L.kl_to_teacher(logits, teacher, loss_mask, self.options["temperature"]))
        return terms

    def per_exit_logs(self, prefix: str, terms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"{prefix}@{k}": t.detach() for k, t in zip(self.layers, terms, strict=True)}

    def save(self, folder: str | Path) -> Path:
        """Write the exit weights (safetensors) and config.json atomically into `folder`."""
        from free_bench.methods.storage import save_method

        return save_method(self, Path(folder))
