"""Self-speculative decoding with the trained exits: lossless, the exits only propose.

Per round, the row drafts up to `draft_len` tokens with its exits (each token leaves where the
method's rule fires, as in a live early-exit decode, under `propagate`); a token that no exit takes
has run the whole model, which says the exits are unsure, and ends the draft. One full-depth pass
over the round's inputs (the last verified token and the drafts: q = drafts + 1 positions) then gives
the full model's token after each of them; the longest prefix of drafts that agrees is kept, plus the
full model's own next token (a correction, or a bonus when every draft agreed). That pass rewrites
the K/V of every position it covers, so the cache behind the verified tokens is the full model's:
greedy output equals the full model's whatever the threshold and `draft_len`. LayerSkip (Elhoushi
et al., 2024) drafts with a fixed exit; here each method's rule decides how deep and how far.

Costs, in layer-equivalents (`engine.cost`): the drafts as a live decode prices them, and each
verification pass as one full token, since at batch 1 a pass over a few positions costs about what a
one-token pass costs (weight- and launch-bound).
"""

from __future__ import annotations

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine.cost import cost_model
from free_bench.engine.decode_exits import check_pairing, decode_step
from free_bench.engine.exit_runtime import ExitRuntime
from free_bench.engine.kv_policies import Propagate
from free_bench.methods.protocol import ExitMethod
from free_bench.models import runner
from free_bench.models.base import Backbone


def speculative_decode(
    backbone: Backbone,
    method: ExitMethod,
    *,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    threshold: float,
    draft_len: int,
    eos_ids: list[int],
) -> dict:
    """One row's speculative decode: the fields of a `GenerateResult`, with `speculative` holding
    {drafted, accepted, verify_passes, acceptance_rate, tokens_per_pass}."""
    check_pairing(backbone, method)
    if pixel_values.shape[0] != 1:
        raise FreeBenchError(f"speculative decoding runs one row, got a batch of {pixel_values.shape[0]}")
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 1:
        raise FreeBenchError(f"draft_len must be an integer >= 1, got {draft_len!r}")
    # room for a round's verification inputs beyond the last kept token
    state = runner.start_decoding(backbone, pixel_values, input_ids, attention_mask,
                                  max_new_tokens=max_new_tokens + draft_len + 1)  # fmt: skip
    runtime = ExitRuntime(method, state, threshold)
    cost = cost_model(backbone, method)
    policy = Propagate(state, runtime, cost)
    L, dev, eos = backbone.num_layers, backbone.device, set(eos_ids)
    rows = torch.zeros(1, dtype=torch.long, device=dev)
    tokens: list[int] = []
    layers: list[int] = []
    confidences: list[float] = []
    spent, passes, drafted, accepted = 0.0, 0, 0, 0
    if state.prompt_hidden is not None:  # OPT: the prompt pass ran every layer and gives token 1
        logits = backbone.logits_from_hidden(state.prompt_hidden[:, -1]).float()[0]  # (V,)
        prob, token = logits.softmax(-1).max(-1)
        tokens, layers, confidences, spent = [int(token)], [L], [float(prob)], cost.full
        last = torch.tensor([int(token)], device=dev)
    else:  # T5: the decoder starts from its start token
        assert state.start_ids is not None
        last = state.start_ids
    while len(tokens) < max_new_tokens and not (tokens and tokens[-1] in eos):
        start = state.pos  # where `last` goes in
        drafts, draft_layers, draft_probs = [], [], []
        for _ in range(min(draft_len, max_new_tokens - len(tokens))):
            x = last if not drafts else torch.tensor([drafts[-1]], device=dev)
            step = decode_step(backbone, runtime, policy, runner.begin_token(state, x), rows, [0], True)
            runner.end_token(state)
            spent += step.cost
            drafts.append(int(step.tokens[0]))
            draft_layers.append(int(step.layers[0]))
            draft_probs.append(float(step.scores[0]))
            if draft_layers[-1] == L or drafts[-1] in eos:  # unsure (no exit took it), or the answer ended
                break
        state.kv.pos = start  # verification: every layer over the round's inputs, rewriting their K/V
        ids = torch.tensor([[int(last[0]), *drafts]], device=dev)  # (1, q)
        hidden = runner.step_layers(state, runner.begin_token(state, ids), 0, L)  # (1, q, D)
        runner.end_token(state)
        probs, full = backbone.logits_from_hidden(hidden[0]).float().softmax(-1).max(-1)  # (q,) each
        new, new_layers, new_probs, keep = accept_round(drafts, draft_layers, draft_probs, full.tolist(),
                                                        probs.tolist(), eos, L)  # fmt: skip
        spent += cost.full
        passes, drafted, accepted = passes + 1, drafted + len(drafts), accepted + keep
        state.kv.pos = start + len(new)  # the cache is the full model's through the kept inputs
        tokens, layers, confidences = tokens + new, layers + new_layers, confidences + new_probs
        last = torch.tensor([tokens[-1]], device=dev)
    return speculative_fields(tokens, layers, confidences, eos, max_new_tokens, spent + policy.spent, cost.full,
                              (drafted, accepted, passes), dev)  # fmt: skip


def accept_round(
    drafts: list[int], draft_layers: list[int], draft_probs: list[float], full_tokens: list[int],
    full_probs: list[float], eos: set[int], num_layers: int,
) -> tuple[list[int], list[int], list[float], int]:  # fmt: skip
    """A round's verdict: the longest agreeing prefix of the drafts, then the full model's own token
    after it (unless an agreeing EOS ended the answer). `full_tokens`/`full_probs` (q = drafts + 1):
    the full model's token after each of the round's inputs. Returns (tokens kept, their layers, their
    probabilities, drafts accepted)."""
    keep = 0
    while keep < len(drafts) and drafts[keep] == full_tokens[keep] and drafts[keep] not in eos:
        keep += 1
    if keep < len(drafts) and drafts[keep] == full_tokens[keep]:  # an agreeing EOS ends the answer
        keep += 1
        return drafts[:keep], draft_layers[:keep], draft_probs[:keep], keep
    return ([*drafts[:keep], full_tokens[keep]], [*draft_layers[:keep], num_layers],
            [*draft_probs[:keep], float(full_probs[keep])], keep)  # fmt: skip


def speculative_fields(
    tokens: list[int], layers: list[int], confidences: list[float], eos: set[int], max_new_tokens: int,
    spent: float, full: float, counts: tuple[int, int, int], device: torch.device,
) -> dict:  # fmt: skip
    """A lone row's speculative decode as the fields of a `GenerateResult`: cut after the first EOS
    and at `max_new_tokens`; `counts` = (drafted, accepted, verification passes)."""
    drafted, accepted, passes = counts
    if eos and any(t in eos for t in tokens):  # nothing after the first EOS
        end = next(i for i, t in enumerate(tokens) if t in eos) + 1
        tokens, layers, confidences = tokens[:end], layers[:end], confidences[:end]
    tokens, layers, confidences = tokens[:max_new_tokens], layers[:max_new_tokens], confidences[:max_new_tokens]
    stats = {"drafted": drafted, "accepted": accepted, "verify_passes": passes,
             "acceptance_rate": accepted / drafted if drafted else float("nan"),
             "tokens_per_pass": len(tokens) / passes if passes else float("nan")}  # fmt: skip
    return {
        "tokens": torch.tensor([tokens], dtype=torch.long, device=device),
        "exit_layers": torch.tensor([layers], dtype=torch.long, device=device),
        "confidences": torch.tensor([confidences], device=device),
        "cost_layers": spent,
        "full_cost_layers": len(tokens) * full,
        "speculative": stats,
    }
