"""Teacher-forced simulation of an exit rule: what the engine would choose at every position.

One teacher-forced pass gives every exit's token and rule scores at every position; any threshold
is then a cheap tensor operation (`choose`). For the first new token this is exact. Later positions
are conditioned on the teacher-forced prefix rather than on the tokens the exits chose, so for
multi-token outputs it is an approximation (a sweep reports its gap against live decoding). With
the `full` or `deferred` policy and the chosen tokens as the prefix, the engine's choices equal the
simulation's exactly (every K/V it reads is one the full model computes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from free_bench.methods import rules
from free_bench.methods.mue import cosine
from free_bench.methods.protocol import ExitMethod
from free_bench.models.runner_state import Encoded


@dataclass(eq=False)
class ExitScores:
    """Per consulted exit (exits at the last layer are not consulted) and decided position."""

    layers: tuple[int, ...]  # consulted exit layers, ascending (all < L)
    tokens: torch.Tensor  # (E, N) long argmax of each exit
    max_prob: torch.Tensor  # (E, N)
    entropy: torch.Tensor  # (E, N) nats
    similarity: torch.Tensor | None  # (E, N) MuE's cosine of layer k's input and output
    final_tokens: torch.Tensor  # (N,) the full model's argmax
    final_prob: torch.Tensor  # (N,)
    num_layers: int

    def cpu(self) -> ExitScores:
        """The same scores in host memory: a sweep evaluates its thresholds on them, and on a GPU each
        threshold's handful of small kernels and syncs would otherwise wait behind other work."""
        sim = None if self.similarity is None else self.similarity.cpu()
        return ExitScores(
            self.layers, self.tokens.cpu(), self.max_prob.cpu(), self.entropy.cpu(), sim,
            self.final_tokens.cpu(), self.final_prob.cpu(), self.num_layers,
        )  # fmt: skip

    def select(self, keep: torch.Tensor) -> ExitScores:
        """The positions where `keep` (N,) is true."""
        sim = None if self.similarity is None else self.similarity[:, keep]
        return ExitScores(
            self.layers, self.tokens[:, keep], self.max_prob[:, keep], self.entropy[:, keep], sim,
            self.final_tokens[keep], self.final_prob[keep], self.num_layers,
        )  # fmt: skip


@torch.inference_mode()
def exit_scores(
    method: ExitMethod, hidden_states: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
    encoder: Encoded | None = None,
) -> ExitScores:  # fmt: skip
    """hidden_states (L+1, B, T, D) of one teacher-forced pass, mask (B, T), positions (N, 2) of the
    (row, column) pairs whose next token is decided -> the scores there. `encoder`: the pass's T5
    encoder output (what T5 generator exits read)."""
    num_layers = hidden_states.shape[0] - 1
    layers = tuple(k for k in method.layers if k < num_layers)
    rows, cols = positions[:, 0], positions[:, 1]
    final = method.backbone.logits_from_hidden(hidden_states[-1][rows, cols]).float()  # (N, V)
    final_prob, final_tokens = final.softmax(-1).max(-1)
    tokens, probs, ents = [], [], []
    for k in layers:  # the whole sequence goes through each exit module (generators attend over it)
        exit_h = method.exit_hidden(k, hidden_states[k], mask, encoder)[rows, cols]  # (N, D)
        logits = method.head_logits(k, exit_h[:, None])[:, 0].float()[None]  # (1, N, V)
        tokens.append(logits[0].argmax(-1))
        probs.append(rules.max_prob(logits)[0])
        ents.append(rules.entropy(logits)[0])
    similarity = None
    if method.rule == "cosine":  # MuE: reads consecutive hidden states, not logits
        h = hidden_states[:, rows, cols]  # (L+1, N, D)
        similarity = torch.stack([cosine(h[k - 1], h[k]) for k in layers])  # (E, N)
    empty = final_prob.new_zeros((0, len(final_prob)))
    stack = lambda xs, like: torch.stack(xs) if xs else like  # noqa: E731
    return ExitScores(
        layers, stack(tokens, empty.long()), stack(probs, empty), stack(ents, empty), similarity,
        final_tokens, final_prob, num_layers,
    )  # fmt: skip


@dataclass(eq=False)
class Choice:
    tokens: torch.Tensor  # (N,) the token the engine would emit
    exit_layers: torch.Tensor  # (N,) the layer it leaves at (L = ran everything)
    index: torch.Tensor  # (N,) exit index, E = none fired
    score: torch.Tensor  # (N,) the rule's score where it left (final max prob when none fired)


def exit_index(method: ExitMethod, scores: ExitScores, threshold: float) -> torch.Tensor:
    """(N,) index of the first consulted exit the rule fires at, E when none does."""
    num_exits, rule = len(scores.layers), method.rule
    if num_exits == 0:  # only an exit at L: nothing is ever consulted
        return torch.zeros_like(scores.final_tokens)
    if rule == "static":
        k = rules.check_threshold(rule, threshold, method.layers)
        return torch.full_like(
            scores.final_tokens, scores.layers.index(k) if k in scores.layers else num_exits
        )
    if rule == "patience":
        return rules.patience_from_tokens(scores.tokens, threshold)
    value = rules.check_threshold(rule, threshold)
    if rule == "max_prob":
        return rules.first_fired(scores.max_prob >= value)
    if rule == "entropy":
        return rules.first_fired(scores.entropy < value)
    if rule == "cosine" and scores.similarity is not None:
        return rules.first_fired(scores.similarity >= value)
    raise rules.FreeBenchError(f"{method.name}: rule {rule!r} has no threshold to simulate")


def choose(method: ExitMethod, scores: ExitScores, threshold: float) -> Choice:
    """Apply the method's rule at `threshold` to precomputed scores (cheap: no model call)."""
    index = exit_index(method, scores, threshold)
    num_exits = len(scores.layers)
    fired = index < num_exits
    tokens, score = scores.final_tokens, scores.final_prob
    if num_exits:
        at = index.clamp(max=num_exits - 1)[None]  # (1, N)
        tokens = torch.where(fired, scores.tokens.gather(0, at)[0], tokens)
        rule_score = {"entropy": scores.entropy, "cosine": scores.similarity}.get(
            method.rule, scores.max_prob
        )
        score = torch.where(fired, rule_score.gather(0, at)[0], score)
    layer_of = torch.tensor([*scores.layers, scores.num_layers], device=index.device)
    return Choice(tokens, layer_of[index], index, score)
