"""Oracle exit: the earliest exit whose logit-lens token equals the full model's (or the correct
token): the ceiling any causal exit rule is measured against. A reference point.

No parameters; exit logits = raw logit lens. It has no threshold: use
`exit_index_oracle(logits, final_tokens, labels)`."""

from __future__ import annotations

from free_bench.methods.exits import logit_lens
from free_bench.methods.registry import register
from free_bench.methods.spec import MethodSpec

ORACLE = register(MethodSpec(name="oracle", rule="oracle", build=logit_lens, needs_labels_in_semi=False))
