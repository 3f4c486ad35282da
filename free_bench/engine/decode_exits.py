"""Greedy decoding with early exits that really skip layers.

Per step (the prompt pass for the first new token, then one token at a time) the rows still
unfinished run segment by segment: layers up to the next exit, the exit's rule, and rows whose
exit fires leave with its token, compacted out of every layer above (`compact=False` keeps them
riding along, discarded, so a batch waits for its slowest row: the baseline compaction is
measured against). Rows that reach layer L take the model's own head. The KV policy then handles
what the exited rows skipped. Finished rows (EOS) leave the batch for good.
"""

from __future__ import annotations

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine import skip as runner_skip
from free_bench.engine.cost import cost_model
from free_bench.engine.exit_runtime import ExitRuntime
from free_bench.engine.kv_policies import POLICIES, Policy
from free_bench.methods.protocol import ExitMethod
from free_bench.methods.storage import backbone_identity
from free_bench.models import runner
from free_bench.models.base import Backbone


def check_pairing(backbone: Backbone, method: ExitMethod) -> None:
    """Exits decode only on the backbone object they were built on (a copy is another backbone)."""
    if method.backbone is backbone:
        return
    mine, theirs = backbone_identity(backbone), backbone_identity(method.backbone)
    raise FreeBenchError(
        f"{method.name} exits belong to backbone {theirs['spec']!r} (fingerprint {theirs['fingerprint']}), "
        f"not to {mine['spec']!r} (fingerprint {mine['fingerprint']}); "
        "load them with free_bench.load_exits(dir, backbone=...)"
    )


class _Step:
    """One decoding step's results for its b rows (indexed 0..b-1 as the rows it started with)."""

    def __init__(self, b: int, num_layers: int, device: torch.device) -> None:
        self.tokens = torch.zeros(b, dtype=torch.long, device=device)
        self.layers = torch.full((b,), num_layers, dtype=torch.long, device=device)
        self.scores = torch.full((b,), float("nan"), device=device)
        self.decided = torch.zeros(b, dtype=torch.bool, device=device)
        self.cost = 0.0  # layer-equivalents, each row's work counted for that row
        self.batch_cost = 0.0  # the same step with each layer, check and head counted once if any row ran it

    def take(self, local: torch.Tensor, tokens: torch.Tensor, layer: int, scores: torch.Tensor) -> None:
        self.tokens[local], self.layers[local], self.scores[local] = tokens, layer, scores.float()
        self.decided[local] = True


def decode_step(
    backbone: Backbone, runtime: ExitRuntime, policy: Policy, hidden: torch.Tensor, rows: torch.Tensor,
    host: list[int], compact: bool,
) -> _Step:  # fmt: skip
    """Decide the positions in flight for `rows` (b,), from their layer-1 input `hidden` (b, q, D)."""
    cost, num_layers = policy.cost, backbone.num_layers
    out = _Step(len(host), num_layers, hidden.device)
    local = torch.arange(len(host), device=hidden.device)
    shrink = compact and policy.compacts
    depth, previous = 0, None
    runtime.start_token()
    for k in runtime.layers:
        if runtime.reads_previous:  # MuE compares layer k's input with its output
            hidden = policy.run(hidden, depth, k - 1, rows, host)
            out.cost += len(host) * (k - 1 - depth)
            out.batch_cost += k - 1 - depth
            depth, previous = k - 1, hidden[:, -1]
        hidden = policy.run(hidden, depth, k, rows, host)
        out.cost += len(host) * (k - depth)
        out.batch_cost += k - depth
        depth = k
        policy.before_check(k, rows, host)
        check = runtime.check(k, hidden, rows, previous)
        fire = check.fired & ~out.decided[local]  # (b_in_flight,)
        n_fire = int(fire.sum())  # host sync: which rows go on decides the next kernel shapes
        out.cost += len(host) * cost.check(k, runtime.reads_logits) + (
            0 if runtime.reads_logits else n_fire * cost.head
        )
        out.batch_cost += cost.check(k, runtime.reads_logits) + (0 if runtime.reads_logits or not n_fire else cost.head)
        if not n_fire:
            continue
        idx = fire.nonzero().squeeze(1)
        out.take(local[idx], check.tokens[idx], k, check.score[idx])
        idx_host = idx.tolist()
        policy.exited(k, hidden[idx], rows[idx], [host[i] for i in idx_host])
        if shrink:
            keep = ~fire
            hidden, rows, local = hidden[keep], rows[keep], local[keep]
            fired_set = set(idx_host)
            host = [r for i, r in enumerate(host) if i not in fired_set]
            runtime.keep(keep)
            if not host:
                break
        elif policy.compacts and bool(out.decided.all()):
            break
    if host and not (policy.compacts and bool(out.decided.all())):
        hidden = policy.run(hidden, depth, num_layers, rows, host)
        out.cost += len(host) * (num_layers - depth + cost.head)
        out.batch_cost += num_layers - depth + cost.head
        logits = backbone.logits_from_hidden(hidden[:, -1]).float()  # (b, V)
        probs, tokens = logits.softmax(-1).max(-1)
        undecided = ~out.decided[local]
        out.take(local[undecided], tokens[undecided], num_layers, probs[undecided])
    policy.finish_step()
    return out


def decode_with_exits(
    backbone: Backbone,
    method: ExitMethod,
    *,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    threshold: float,
    kv_policy: str,
    compact: bool,
    eos_ids: list[int],
    pad_id: int,
    schedule: list[int] | None = None,
) -> dict:
    """The early-exit decode; returns the fields of a `GenerateResult`. `schedule`: a replay of one
    row (`ExitRuntime`), `max_new_tokens` = its length."""
    check_pairing(backbone, method)
    if kv_policy == "deferred" and not compact:
        raise FreeBenchError("compact=False is measured under the propagate policy; deferred always compacts")
    state, first = runner_skip.open_prompt(
        backbone, pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens
    )
    runtime = ExitRuntime(method, state, threshold, schedule)
    cost = cost_model(backbone, method)
    policy = POLICIES[kv_policy](state, runtime, cost)
    batch, device = state.batch_size, backbone.device
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (B, N)
    exit_layers = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)  # (B, N)
    scores = torch.full((batch, max_new_tokens), float("nan"), device=device)  # (B, N)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    host, spent, produced, hidden_in = list(range(batch)), 0.0, 0, first
    batch_spent, steps_run = 0.0, 0  # per step, each layer once if any row ran it; steps decoded
    for t in range(max_new_tokens):
        if t:
            hidden_in = runner.begin_token(state, tokens[:, t - 1])  # (B, 1, D)
        rows = torch.tensor(host, device=device)
        step = decode_step(backbone, runtime, policy, hidden_in[rows], rows, host, compact)
        runner.end_token(state)
        tokens[rows, t], exit_layers[rows, t], scores[rows, t] = step.tokens, step.layers, step.scores
        spent += step.cost
        batch_spent, steps_run = batch_spent + step.batch_cost, steps_run + 1
        produced += len(host)
        if eos.numel():
            done = torch.isin(step.tokens, eos).tolist()
            host = [r for r, d in zip(host, done, strict=True) if not d]
        if not host:
            break
    steps = t + 1
    return {
        "tokens": tokens[:, :steps],
        "exit_layers": exit_layers[:, :steps],
        "confidences": scores[:, :steps],
        "cost_layers": spent + policy.spent,
        "full_cost_layers": produced * cost.full,
        # a batch at batch-1 widths pays a layer about once whatever its rows (weight- or launch-bound):
        # what it saves is the layers no row in flight ran; a batched KV fill counts once too
        "batch_cost_layers": batch_spent + policy.batch_spent,
        "batch_full_cost_layers": steps_run * cost.full,
    }
