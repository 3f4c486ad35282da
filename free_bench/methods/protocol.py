"""`ExitMethod`: what the trainer, the engine, evaluation and storage use of an exit method.

A Protocol, not a base class: callers depend on this surface only, and `methods.exits.Exits` (one
class, composed per method) is its one implementation. Capabilities are read off the composed parts
(`generators is not None`, `discriminators is not None`, `rule`), never off a class.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, TypeGuard

import torch
from torch import nn

from free_bench.methods.heads import Discriminators, Generators
from free_bench.models.base import Backbone
from free_bench.models.runner_state import Encoded


class ExitMethod(Protocol):
    """The exits of one method at a set of LM layers: their modules, rule, losses and weights.

    An nn.Module whose submodules are the exit modules only (never the backbone, a plain attribute),
    so `state_dict()` / `parameters()` hold exit weights alone."""

    backbone: Backbone
    layers: tuple[int, ...]  # exit LM layers, 1-based ascending
    options: dict[str, Any]  # resolved options (defaults + given), what config.json records
    generators: Generators | None  # FREE/distill decoder layers: the engine gives them their own KV
    discriminators: Discriminators | None  # adversarial methods' D, trained by `discriminator_loss`

    @property
    def name(self) -> str: ...  # registry name
    @property
    def rule(self) -> str: ...  # one of rules.RULES
    @property
    def trainable(self) -> bool: ...  # has a loss (static, oracle, mue do not)
    @property
    def adversarial(self) -> bool: ...  # alternating D/G steps (FREE)
    @property
    def num_exits(self) -> int: ...

    # --- exit modules ------------------------------------------------------------------------
    def exit_hidden(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Exit k's hidden-to-hidden part. (B, T, D) -> (B, T, D); `encoder`: a T5 prefix's output."""
        ...

    def head_logits(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Exit k's head on its hidden output. (B, T, D) -> (B, T, V)."""
        ...

    def exit_logits(
        self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Output of LM layer k (B, T, D) -> exit logits (B, T, V)."""
        ...

    def exit_modules(self, k: int) -> list[nn.Module]:
        """The modules exit k adds on top of the shared frozen head (for its cost)."""
        ...

    def all_exit_logits(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(L+1, B, T, D) -> (E, B, T, V)."""
        ...

    def exit_position(self, k: int) -> int:
        """Index 0..E-1 of the exit at LM layer k."""
        ...

    def restrict(self, layers: str | list[int] | tuple[int, ...]) -> ExitMethod:
        """The same exits consulted at a subset of the placement (modules shared, not copied)."""
        ...

    # --- exit rules --------------------------------------------------------------------------
    def exit_index(self, scores: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Per-exit scores (E, N, V) logits, or (E, N) for "cosine" -> (N,) first exit firing, E if none."""
        ...

    def exit_index_oracle(
        self, logits: torch.Tensor, final_tokens: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(E, N, V) -> (N,) earliest exit agreeing with the full model (or `labels`)."""
        ...

    # --- training ----------------------------------------------------------------------------
    def losses(
        self,
        hidden_states: torch.Tensor,
        targets: torch.Tensor | None,
        mask: torch.Tensor,
        regime: str,
        loss_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"loss": what `exit_parameters()` backpropagate, other keys: detached terms}."""
        ...

    def exit_parameters(self) -> list[nn.Parameter]:
        """What `losses` trains: every parameter outside `discriminators`."""
        ...

    def discriminator_loss(
        self, hidden_states: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor | None = None,
        encoder: Encoded | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Adversarial methods' D step: {"loss", "disc", "disc_acc", "disc_acc@k"}."""
        ...

    # --- nn.Module -----------------------------------------------------------------------------
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...
    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any: ...
    def train(self, mode: bool = True) -> ExitMethod: ...
    def eval(self) -> ExitMethod: ...


def _members() -> tuple[str, ...]:
    names = set(getattr(ExitMethod, "__annotations__", {}))
    names |= {
        n
        for n, v in vars(ExitMethod).items()
        if not n.startswith("_") and (callable(v) or isinstance(v, property))
    }
    return tuple(sorted(names))


MEMBERS: tuple[str, ...] = _members()


def is_exit_method(obj: object) -> TypeGuard[ExitMethod]:
    """Whether `obj` has every `ExitMethod` member. Not `isinstance` on a runtime_checkable Protocol:
    from Python 3.12 that looks attributes up statically and misses nn.Module submodules."""
    return isinstance(obj, nn.Module) and all(hasattr(obj, name) for name in MEMBERS)
