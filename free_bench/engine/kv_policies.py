"""What happens to the layers a token skipped: the KV policies of method.md.

- `propagate` (CALM): once the step is decided, the exited hidden state fills the K/V of every
  skipped layer (and of the deeper exits' generator layers) at its positions; costs k/v projections.
- `deferred` (EE-LLM): skipped positions stay pending; when a later token of the row runs layer j,
  the positions still missing layer j run it in the same call, batched in front of that token.
- `full` (the paper's code): every row runs every layer and every exit; exits only choose the token.

Each policy also prices what it does (`spent`, layer-equivalents, see `engine.cost`).
"""

from __future__ import annotations

import torch

from free_bench.engine import skip as runner_skip
from free_bench.engine.cost import CostModel
from free_bench.engine.exit_runtime import ExitRuntime
from free_bench.models import runner
from free_bench.models.runner_state import DecodeState


class Policy:
    name = ""
    compacts = True  # rows that exited leave the layers above their exit

    def __init__(self, state: DecodeState, runtime: ExitRuntime, cost: CostModel) -> None:
        self.state, self.runtime, self.cost = state, runtime, cost
        self.spent = 0.0  # policy work beyond the layers and exits the engine counts itself
        self.batch_spent = 0.0  # the same with one batched call counted once, whatever its rows

    def run(
        self, hidden: torch.Tensor, start: int, end: int, rows: torch.Tensor, host: list[int]
    ) -> torch.Tensor:
        """Layers start+1..end for `rows` (host: the same rows as ints); (b, q, D) -> (b, q, D)."""
        return runner.step_layers(self.state, hidden, start, end, rows=rows)

    def before_check(self, k: int, rows: torch.Tensor, host: list[int]) -> None:
        """Called right after layer k ran for `rows`, before exit k is consulted."""

    def exited(self, layer: int, hidden: torch.Tensor, rows: torch.Tensor, host: list[int]) -> None:
        """Rows leave after `layer` with its output `hidden` (b, q, D) at the positions in flight."""

    def finish_step(self) -> None:
        """Every row of the step is decided; the positions in flight are about to be committed."""


class Full(Policy):
    name = "full"
    compacts = False


class Propagate(Policy):
    name = "propagate"

    def __init__(self, state: DecodeState, runtime: ExitRuntime, cost: CostModel) -> None:
        super().__init__(state, runtime, cost)
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def exited(self, layer: int, hidden: torch.Tensor, rows: torch.Tensor, host: list[int]) -> None:
        self.pending.append((layer, hidden, rows))

    def finish_step(self) -> None:
        # After the whole step, so rows that rode along uncompacted get their K/V overwritten too.
        for layer, hidden, rows in self.pending:
            runner_skip.fill_kv_from(self.state, layer, hidden, rows)  # layers layer+1..L, one matmul
            filled = self.state.num_layers - layer + self.runtime.fill_generators(layer, hidden, rows)
            self.spent += len(rows) * filled * self.cost.kv_fill
            self.batch_spent += filled * self.cost.kv_fill  # the group's rows in one product
        self.pending = []


class Deferred(Policy):
    name = "deferred"

    def __init__(self, state: DecodeState, runtime: ExitRuntime, cost: CostModel) -> None:
        super().__init__(state, runtime, cost)
        # filled[r][j]: positions of row r holding layer j+1's K/V; the missing ones are always a
        # suffix [filled, pos), since every run of layer j catches the row's pending positions up.
        self.filled = [[0] * state.num_layers for _ in range(state.batch_size)]
        self.hidden: torch.Tensor | None = None  # (B, max_len, D) pending positions' last output
        self._caught: dict[int, int] = {}  # row -> first position caught up at the last layer run

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        if self.hidden is None:
            st = self.state
            self.hidden = like.new_zeros((st.batch_size, st.max_len, like.shape[-1]))
        return self.hidden

    def run(
        self, hidden: torch.Tensor, start: int, end: int, rows: torch.Tensor, host: list[int]
    ) -> torch.Tensor:
        st, q = self.state, hidden.shape[1]
        pos = st.pos
        for j in range(start, end):
            lags = [self.filled[r][j] for r in host]
            if all(lag == pos for lag in lags):
                hidden = runner.step_layers(st, hidden, j, j + 1, rows=rows)
            else:
                hidden = self._catch_up(hidden, j, rows, lags)
            self._caught = dict(zip(host, lags, strict=True))
            for r in host:
                self.filled[r][j] = pos + q
        return hidden

    def _catch_up(self, hidden: torch.Tensor, j: int, rows: torch.Tensor, lags: list[int]) -> torch.Tensor:
        """Layer j+1 for each group of rows missing the same positions, batched in front of the token."""
        st, buf, pos, q = self.state, self._buffer(hidden), self.state.pos, hidden.shape[1]
        out = torch.empty_like(hidden)
        for start in sorted(set(lags)):
            local = [i for i, lag in enumerate(lags) if lag == start]
            idx = torch.tensor(local, device=hidden.device)
            sub = rows[idx]
            x = torch.cat([buf[sub, start:pos], hidden[idx]], dim=1)  # (g, pos - start + q, D)
            like = x.new_empty((st.batch_size, x.shape[1], x.shape[2]))
            with runner_skip.replay(st, start, like):
                y = runner.step_layers(st, x, j, j + 1, rows=sub)
            buf[sub, start:pos] = y[:, : pos - start]
            out[idx] = y[:, pos - start :]
            self.spent += len(local) * (pos - start) / q  # the extra positions, in own-step units
            self.batch_spent += (pos - start) / q
        return out

    def before_check(self, k: int, rows: torch.Tensor, host: list[int]) -> None:
        """Exit k's generator cache misses the same positions layer k just caught up: fill it."""
        rt = self.runtime
        if rt.generators is None:
            return
        st, pos = self.state, self.state.pos
        for start in sorted({self._caught[r] for r in host if self._caught[r] < pos}):
            local = [i for i, r in enumerate(host) if self._caught[r] == start]
            sub = rows[torch.tensor(local, device=rows.device)]
            assert self.hidden is not None  # positions were pending, so exited() made the buffer
            x = self.hidden[sub, start:pos]  # (g, pos - start, D) outputs of layer k
            like = x.new_empty((st.batch_size, x.shape[1], x.shape[2]))
            with runner_skip.replay(st, start, like):
                rt.generator(k, x, sub)
            self.spent += len(local) * (pos - start) * self.cost.exit_extra.get(k, 0.0)
            self.batch_spent += (pos - start) * self.cost.exit_extra.get(k, 0.0)

    def exited(self, layer: int, hidden: torch.Tensor, rows: torch.Tensor, host: list[int]) -> None:
        pos, q = self.state.pos, hidden.shape[1]
        self._buffer(hidden)[rows, pos : pos + q] = hidden


POLICIES = {p.name: p for p in (Propagate, Deferred, Full)}
