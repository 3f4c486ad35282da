"""Static exit: always leave at layer k (k swept), through the raw logit lens. A reference point.

No parameters, nothing to train; `exit_index(logits, k)` -> the exit at layer k."""

from __future__ import annotations

from free_bench.methods.exits import logit_lens
from free_bench.methods.registry import register
from free_bench.methods.spec import MethodSpec

STATIC = register(MethodSpec(name="static", rule="static", build=logit_lens, needs_labels_in_semi=False))
