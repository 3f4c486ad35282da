"""What a graphs-engine step costs, in layer-equivalents (`engine.cost`), per row and per batch.

Same prices as `engine.decode_exits`: a row pays the layers up to its exit, every check below and at
it, the head where it leaves (a rule that does not read logits pays the head only at the exit that
fires) and, under `propagate`, the K/V fill of the layers (and deeper generator layers) it skipped.
A batch pays each layer, check and head once per step if any row ran it, and one fill per exit that
rows left at (one product for the group): what a batch at batch-1 widths saves is the layers no row
ran. Rows riding along past their exit are counted at their own exit per row; the batch count has
them where the deepest row took the step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from free_bench.engine.cost import CostModel


class StepPrices:
    """Prices of one decoder's steps: its consulted exits, rule, policy and generator layers."""

    def __init__(
        self, cost: CostModel, exits: tuple[int, ...], reads_logits: bool, propagate: bool, generators: bool
    ) -> None:
        self.cost, self.exits, self.reads, self.propagate = cost, exits, reads_logits, propagate
        self.generators, self.L = generators, cost.num_layers

    def _fill(self, exit_at: int) -> float:
        deeper = len([e for e in self.exits if e > exit_at]) if self.generators else 0
        return (self.L - exit_at + deeper) * self.cost.kv_fill

    def row(self, exit_at: int, ran_to: int) -> float:
        """One row that left at `exit_at` (a consulted exit, or L: the model's head) having run its layers
        to `ran_to` (its exit; L under the `full` policy, which runs every layer and exit)."""
        c = self.cost
        spent = ran_to + (c.head if ran_to == self.L else 0.0)
        for k in self.exits:
            if k <= ran_to:
                spent += c.check(k, self.reads) + (c.head if not self.reads and k == exit_at else 0.0)
        if self.propagate and exit_at < self.L:
            spent += self._fill(exit_at)
        return spent

    def batch(self, ran_to: int, exits_taken: Iterable[int]) -> float:
        """One step of a batch whose segments ran to layer `ran_to`, its rows leaving at `exits_taken`."""
        c, taken = self.cost, set(exits_taken)
        spent = ran_to + (c.head if ran_to == self.L else 0.0)
        spent += sum(c.check(k, self.reads) for k in self.exits if k <= ran_to)
        left = [k for k in taken if k < self.L]
        if not self.reads:
            spent += c.head * len(left)
        if self.propagate:
            spent += sum(self._fill(k) for k in left)
        return spent


class Collected:
    """What a decode of n rows produced, step by step (rows may move between buckets)."""

    def __init__(self, n: int, max_new: int, full: float, eos_ids: list[int], pad_id: int, device) -> None:
        self.n, self.full, self.eos, self.device = n, full, set(eos_ids), device
        self.tokens = [[pad_id] * max_new for _ in range(n)]
        self.layers = [[0] * max_new for _ in range(n)]
        self.scores = torch.full((n, max_new), float("nan"), device=device)  # (n, N)
        self.done = [False] * n
        self.steps, self.spent, self.batch_spent, self.produced = 0, 0.0, 0.0, 0

    def record(self, step: dict, where: list[int]) -> list[int]:
        """One step of the bucket whose row b holds output row where[b]; returns the bucket rows that
        emitted EOS."""
        t, finished, live_rows = self.steps, [], [b for b, alive in enumerate(step["live"]) if alive]
        for b, cost in zip(live_rows, step["row_costs"], strict=True):
            r = where[b]
            self.tokens[r][t], self.layers[r][t] = step["tokens"][b], step["layers"][b]
            self.spent += cost
            if step["tokens"][b] in self.eos:
                finished.append(b)
        idx = torch.tensor(live_rows, device=self.device)
        self.scores[torch.tensor([where[b] for b in live_rows], device=self.device), t] = step["scores"][idx]
        self.produced += len(live_rows)
        self.batch_spent += step["batch_cost"]
        self.steps += 1
        return finished

    def fields(self) -> dict:
        T, dev = self.steps, self.device
        return {
            "tokens": torch.tensor([row[:T] for row in self.tokens], dtype=torch.long, device=dev),
            "exit_layers": torch.tensor([row[:T] for row in self.layers], dtype=torch.long, device=dev),
            "confidences": self.scores[:, :T],
            "cost_layers": self.spent,
            "full_cost_layers": self.produced * self.full,
            "batch_cost_layers": self.batch_spent,
            "batch_full_cost_layers": T * self.full,
        }
