"""One decode's view of an `ExitMethod`: the exits it consults, their decisions, their own KV cache.

The rule is the method's, applied through `methods.rules` (the same functions the teacher-forced
simulation uses), one exit at a time, for the rows still in flight. FREE's and distillation's exit
modules are decoder layers with causal self-attention: they get a KV store of their own (one slot
per exit) that the KV policies keep filled like the backbone's.

An exit at the last layer is never consulted: a token that reaches layer L has paid for the whole
model, and the model's own head decides it (the "none fired" case of `ExitMethod.exit_index`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine import skip as runner_skip
from free_bench.methods import rules
from free_bench.methods.heads import attention_modules
from free_bench.methods.mue import cosine
from free_bench.methods.protocol import ExitMethod
from free_bench.models import runner_t5
from free_bench.models.runner_kv import KVStore, T5StepCache
from free_bench.models.runner_state import DecodeState

LIVE_RULES = ("max_prob", "entropy", "patience", "static", "cosine")
_READS_LOGITS = ("max_prob", "entropy", "patience")


def verdict(
    rule: str,
    logits: torch.Tensor,
    threshold: float | torch.Tensor,
    previous: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A logits-reading rule (max_prob, entropy, patience, static) on one exit's logits (b, V):
    (tokens, score, fired, PABEE's counter after this exit or None), each (b,). Both engines decide
    with it; `threshold` may be a device scalar (the graphs engine changes it without recapturing),
    `previous`/`counts` are the previous exit's tokens and counter (None at the first exit)."""
    tokens = logits.argmax(-1)
    if rule == "patience":
        counts = rules.patience_step(previous, tokens, counts)
        return tokens, counts.float(), counts >= threshold, counts
    if rule == "entropy":
        score = rules.entropy(logits[None])[0]
        return tokens, score, score < threshold, None
    score = rules.max_prob(logits[None])[0]
    fired = torch.ones_like(tokens, dtype=torch.bool) if rule == "static" else score >= threshold
    return tokens, score, fired, None


@dataclass(eq=False)
class Check:
    """An exit's verdict for b rows: the token it would emit, whether it fires, the rule's score."""

    tokens: torch.Tensor  # (b,) long; meaningful where fired
    fired: torch.Tensor  # (b,) bool
    score: torch.Tensor  # (b,) float: max prob, entropy, patience count or cosine


def check_schedule(schedule: Sequence[int], exits: tuple[int, ...], num_layers: int) -> list[int]:
    """A replay's exit layer per token: each a consulted exit or `num_layers` (the full model)."""
    allowed = (*exits, num_layers)
    bad = sorted({int(k) for k in schedule if int(k) not in allowed})
    if not schedule or bad:
        raise FreeBenchError(
            f"an exit schedule needs one layer per token, each a consulted exit {list(exits)} or "
            f"{num_layers} (the full model); got {'nothing' if not schedule else bad}"
        )
    return [int(k) for k in schedule]


class ExitRuntime:
    """`schedule` (a replay): token t leaves at layer schedule[t], whatever the rule says; the rule's
    checks at the exits below it still run and are paid, so the decode costs what a live one with
    those depths costs."""

    def __init__(
        self, method: ExitMethod, state: DecodeState, threshold: float, schedule: Sequence[int] | None = None
    ) -> None:
        if method.rule not in LIVE_RULES:
            raise FreeBenchError(
                f"{method.name}: the {method.rule} rule is a ceiling that needs the full model's answer; "
                "it exists in simulation only (free-bench sweep --mode simulated)"
            )
        self.method, self.state, self.rule = method, state, method.rule
        self.threshold = rules.check_threshold(method.rule, threshold, method.layers)
        self.layers = tuple(k for k in method.layers if k < state.num_layers)  # consulted exits
        self.reads_logits = self.rule in _READS_LOGITS
        self.reads_previous = self.rule == "cosine"  # MuE compares layer k's input and output
        self.generators = method.generators  # FREE/distill decoder-layer exits, else None
        self.gen_kv = None  # one slot per trained generator: a restricted method consults some of them
        self.gen_cross, self.gen_cache = None, None  # T5 generators: their cross K/V and the cache pairing both
        if self.generators is not None:
            self.gen_kv = KVStore(len(self.generators.layers), state.batch_size, state.max_len)
            if self.generators.lm_type == "t5":
                assert state.encoder_hidden is not None
                self.gen_cross = runner_t5.cross_kv(list(self.generators.layers.values()), state.encoder_hidden)
                self.gen_cache = T5StepCache(self.gen_kv, self.gen_cross)
        self._tokens: torch.Tensor | None = None  # PABEE: previous exit's argmax per row in flight
        self._counts: torch.Tensor | None = None
        self.schedule = None if schedule is None else check_schedule(schedule, self.layers, state.num_layers)
        self._t = -1  # the token being decided

    def slot(self, k: int) -> int:
        """The generator KV slot of exit k (the layer_idx its attention writes under)."""
        assert self.generators is not None
        return int(attention_modules(self.generators.layers[str(k)])[0].layer_idx)

    # --- per token ---------------------------------------------------------------------------
    def start_token(self) -> None:
        self._tokens = self._counts = None
        self._t += 1

    def forced_layer(self) -> int | None:
        """The layer the schedule sends the current token to (None: no schedule, the rule decides)."""
        return None if self.schedule is None else self.schedule[self._t]

    def keep(self, mask: torch.Tensor) -> None:
        """Rows in flight were compacted to `mask` (b,) bool: keep the rule's state aligned."""
        if self._tokens is not None and self._counts is not None:
            self._tokens, self._counts = self._tokens[mask], self._counts[mask]

    def generator(self, k: int, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Exit k's generator layer over the positions being addressed (b, q, D) -> (b, q, D);
        writes its K/V into the generator store at the state's current positions."""
        assert self.generators is not None and self.gen_kv is not None
        st = self.state
        self.gen_kv.pos, self.gen_kv.rows = st.kv.pos, rows
        mask = None if st.self_mask is None else st.self_mask[rows]
        try:
            if self.gen_cross is not None:  # T5: its own self-attention store and cross K/V, the state's bias
                self.gen_cross.rows = rows
                cross_mask = None if st.cross_mask is None else st.cross_mask[rows]
                return self.generators.t5_step(k, hidden, st, mask, cross_mask, self.gen_cache)
            return self.generators(k, hidden, mask4d=mask, cache=self.gen_kv)
        finally:
            self.gen_kv.rows = None
            if self.gen_cross is not None:
                self.gen_cross.rows = None

    def check(
        self, k: int, hidden: torch.Tensor, rows: torch.Tensor, previous: torch.Tensor | None = None
    ) -> Check:
        """Exit k on the output of layer k (b, q, D) for `rows`; `previous` (b, D) is the input of
        layer k at the last position (MuE)."""
        check = self._check(k, hidden, rows, previous)
        forced = self.forced_layer()
        if forced is not None:  # a replay: the schedule decides, the check above was paid for
            check.fired = torch.full_like(check.fired, k == forced)
        return check

    def _check(
        self, k: int, hidden: torch.Tensor, rows: torch.Tensor, previous: torch.Tensor | None
    ) -> Check:
        m, last = self.method, hidden[:, -1:]  # (b, 1, D)
        forced = self.forced_layer()
        if self.rule == "static" and k != (self.threshold if forced is None else forced):  # decided by position alone: nothing to compute
            nothing = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
            return Check(
                nothing.long(), nothing, torch.full(nothing.shape, float("nan"), device=hidden.device)
            )
        if self.generators is not None:
            last = self.generator(k, hidden, rows)[:, -1:]
        elif self.reads_logits or self.rule == "static":
            last = m.exit_hidden(k, last)
        if self.rule == "cosine":
            assert previous is not None
            score = cosine(previous, hidden[:, -1])  # (b,)
            fired = score >= self.threshold
            return Check(m.head_logits(k, last)[:, 0].argmax(-1), fired, score)
        logits = m.head_logits(k, last)[:, 0].float()  # (b, V)
        tokens, score, fired, counts = verdict(self.rule, logits, self.threshold, self._tokens, self._counts)
        if counts is not None:  # PABEE: the counter and tokens the next exit compares with
            self._tokens, self._counts = tokens, counts
        return Check(tokens, fired, score)

    # --- KV policies ---------------------------------------------------------------------------
    def fill_generators(self, above: int, hidden: torch.Tensor, rows: torch.Tensor) -> int:
        """Propagate: generator caches of the exits deeper than layer `above` get K/V from `hidden`
        (b, q, D) at the positions in flight; returns how many were filled."""
        if self.generators is None or self.gen_kv is None:
            return 0
        self.gen_kv.pos = self.state.kv.pos
        deeper = [k for k in self.layers if k > above]
        for k in deeper:
            layer = self.generators.layers[str(k)]
            key, value = runner_skip.kv_projection(self.generators.lm_type, layer, hidden)
            self.gen_kv.write(self.slot(k), key.to(hidden.dtype), value.to(hidden.dtype), rows)
        return len(deeper)
