"""MuE-style exit (Tang et al., 2023): leave when a layer barely changes the hidden state, i.e. the
cosine similarity of consecutive layers' hidden states reaches a threshold. No heads, no training:
the exit's logits are the raw logit lens. An extra the paper compares against.

Rule "cosine": `exit_index(similarities (E, N), threshold)`, similarities from `similarities()`."""

from __future__ import annotations

from free_bench.methods.exits import logit_lens
from free_bench.methods.registry import register
from free_bench.methods.rules import cosine
from free_bench.methods.spec import MethodSpec

__all__ = ["MUE", "cosine"]  # cosine: the rule's score, imported from here by the engine

MUE = register(MethodSpec(name="mue", rule="cosine", build=logit_lens, needs_labels_in_semi=False))
