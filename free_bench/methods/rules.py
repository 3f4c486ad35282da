"""Exit rules as pure tensor functions, so teacher-forced simulation and decoding share one definition.

Every rule maps per-exit scores of N tokens, (E, N, ...) with exits in placement order, to a LongTensor
(N,) holding the index 0..E-1 of the first exit that fires, or E when none fires ("run the full
model"). Nothing here looks at later exits than the one that fires, except the oracle, which is the
ceiling no causal rule can beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from free_bench.core.errors import FreeBenchError

RULES = ("max_prob", "entropy", "patience", "static", "oracle", "cosine")
NO_EXIT_LABEL = -100  # label ids equal to this (ignored targets) never count as "correct"


def first_fired(fired: torch.Tensor) -> torch.Tensor:
    """(E, N) bool -> (N,) index of the first True along E, or E where a column has none."""
    if fired.dim() != 2:
        raise FreeBenchError(f"expected (E, N) exit flags, got shape {tuple(fired.shape)}")
    num_exits = fired.shape[0]
    first = fired.to(torch.uint8).argmax(dim=0)  # argmax returns the first maximal index
    return torch.where(fired.any(dim=0), first, torch.full_like(first, num_exits))


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape[0] == 0:
        raise FreeBenchError(f"exit logits must be (E>=1, N, V), got shape {tuple(logits.shape)}")


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """(E, N, V) -> (E, N) largest softmax probability of each exit's distribution."""
    return logits.float().softmax(dim=-1).amax(dim=-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(E, N, V) -> (E, N) entropy in nats; -inf logits (banned tokens) contribute 0, not NaN."""
    logp = logits.float().log_softmax(dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)


def cosine(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """(..., D) input and output of layer k -> (...) cosine similarity, in float32 (MuE's score)."""
    return F.cosine_similarity(previous.float(), current.float(), dim=-1)


def max_prob_exit(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """First exit whose max softmax probability >= threshold (FREE, distillation)."""
    _check_logits(logits)
    return first_fired(max_prob(logits) >= threshold)


def entropy_exit(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """First exit whose entropy (nats) < threshold (DeeBERT)."""
    _check_logits(logits)
    return first_fired(entropy(logits) < threshold)


def check_patience(patience: float) -> int:
    """Patience as an int >= 1 (integral floats from threshold sweeps are accepted)."""
    if isinstance(patience, bool) or not isinstance(patience, (int, float)) or patience != int(patience):
        raise FreeBenchError(f"patience must be an integer >= 1, got {patience!r}")
    if int(patience) < 1:
        raise FreeBenchError(f"patience must be an integer >= 1, got {patience!r}")
    return int(patience)


def check_threshold(rule: str, threshold: float, layers: tuple[int, ...] = ()) -> float:
    """A rule's parameter in its range: probability in [0, 1], entropy >= 0, integer patience >= 1,
    cosine in [-1, 1], static: a layer of the placement. Returns it normalised (patience/static: int)."""
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if rule == "patience":
        return check_patience(threshold)
    if not number or threshold != threshold:  # NaN
        raise FreeBenchError(f"{rule} threshold must be a number, got {threshold!r}")
    if rule == "max_prob" and not 0 <= threshold <= 1:
        raise FreeBenchError(f"max_prob threshold is a probability in [0, 1], got {threshold!r}")
    if rule == "entropy" and threshold < 0:
        raise FreeBenchError(f"entropy threshold must be >= 0 (nats), got {threshold!r}")
    if rule == "cosine" and not -1 <= threshold <= 1:
        raise FreeBenchError(f"cosine threshold must be in [-1, 1], got {threshold!r}")
    if rule == "static":
        if threshold != int(threshold) or int(threshold) not in layers:
            raise FreeBenchError(
                f"static exit layer {threshold!r} is not an exit of this placement {list(layers)}"
            )
        return int(threshold)
    return float(threshold)


def patience_step(
    previous: torch.Tensor | None, current: torch.Tensor, counts: torch.Tensor | None
) -> torch.Tensor:
    """PABEE's counter after one more exit: +1 where this exit's argmax equals the previous one's,
    else 0 (0 at the first exit, `previous is None`). (N,) long each."""
    if previous is None or counts is None:
        return torch.zeros_like(current)
    return torch.where(current == previous, counts + 1, torch.zeros_like(counts))


def patience_exit(logits: torch.Tensor, patience: float) -> torch.Tensor:
    """PABEE's counter: exit i fires when the argmax at exits i-p, ..., i is one token (p repeats).

    Exactly PABEE's loop: the counter starts at 0 at the first exit, +1 when an exit's argmax equals
    the previous exit's, reset to 0 otherwise; stop when it reaches p. So p=1 means "two consecutive
    exits agree", and the earliest exit that can fire is index p (never the first exit alone).
    """
    _check_logits(logits)
    return patience_from_tokens(logits.argmax(dim=-1), patience)


def patience_from_tokens(tokens: torch.Tensor, patience: float) -> torch.Tensor:
    """`patience_exit` on the exits' argmax tokens (E, N) -> (N,)."""
    p = check_patience(patience)
    counts = torch.zeros_like(tokens)  # (E, N) PABEE counter after each exit
    for i in range(1, tokens.shape[0]):
        counts[i] = patience_step(tokens[i - 1], tokens[i], counts[i - 1])
    return first_fired(counts >= p)


def static_exit(layers: tuple[int, ...], layer: float, num_exits: int, num_tokens: int) -> torch.Tensor:
    """Always the exit at LM layer `layer` (which must be in the placement); E if it is not yet seen."""
    integral = isinstance(layer, (int, float)) and not isinstance(layer, bool) and layer == int(layer)
    if not integral or int(layer) not in layers:
        raise FreeBenchError(f"static exit layer {layer!r} is not an exit of this placement {list(layers)}")
    index = layers.index(int(layer))
    return torch.full((num_tokens,), index if index < num_exits else num_exits, dtype=torch.long)


def oracle_exit(
    logits: torch.Tensor, final_tokens: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Earliest exit whose argmax equals the full model's token (N,), or, with `labels` (N,), the
    earliest exit whose argmax is the correct token ("earliest correct"); E when no exit matches.
    Labels equal to -100 (ignored positions) never match."""
    _check_logits(logits)
    ref = final_tokens if labels is None else labels
    if ref.shape != logits.shape[1:2]:
        raise FreeBenchError(
            f"oracle reference tokens must be (N={logits.shape[1]},), got {tuple(ref.shape)}"
        )
    ref = ref.to(logits.device)
    fired = (logits.argmax(dim=-1) == ref[None]) & (ref[None] != NO_EXIT_LABEL)  # (E, N)
    return first_fired(fired)


def cosine_exit(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """(E, N) cosine similarity of consecutive layers' hidden states: first exit with sim >= threshold (MuE)."""
    if similarity.dim() != 2:
        raise FreeBenchError(f"MuE scores must be (E, N) similarities, got shape {tuple(similarity.shape)}")
    return first_fired(similarity >= threshold)


def exit_index(rule: str, scores: torch.Tensor, threshold: float, layers: tuple[int, ...]) -> torch.Tensor:
    """Exit index (N,) under `rule` at `threshold`, E = none fired. `scores` are per-exit logits
    (E, N, V), or for "cosine" the (E, N) similarities; `layers` is the placement (for "static")."""
    if rule == "max_prob":
        return max_prob_exit(scores, threshold)
    if rule == "entropy":
        return entropy_exit(scores, threshold)
    if rule == "patience":
        return patience_exit(scores, threshold)
    if rule == "static":
        return static_exit(layers, threshold, scores.shape[0], scores.shape[1]).to(scores.device)
    if rule == "cosine":
        if scores.dim() != 2:
            raise FreeBenchError(
                f"the cosine rule decides on (E, N) similarities from similarities(), got shape {tuple(scores.shape)}"
            )
        return cosine_exit(scores, threshold)
    if rule == "oracle":
        raise FreeBenchError(
            "the oracle rule has no threshold: it needs the full model's tokens; "
            "call exit_index_oracle(logits, final_tokens, labels=None)"
        )
    raise FreeBenchError(f"rule {rule!r} is not one of {', '.join(RULES)}")


def thresholds_for(rule: str, layers: list[int], grid: int) -> list[float]:
    """The threshold grid of a rule: probabilities in [0, 1], entropies in [0, 5] nats, every patience,
    every exit layer (static)."""
    if rule in ("max_prob", "cosine"):
        return [round(i / (grid - 1), 4) for i in range(grid)]
    if rule == "entropy":
        return [round(5 * i / (grid - 1), 4) for i in range(grid)]
    if rule == "patience":
        return [float(p) for p in range(1, len(layers) + 1)]
    if rule == "static":
        return [float(k) for k in layers]
    raise FreeBenchError(f"no threshold grid for rule {rule!r}")


def safest_first(rule: str, thresholds) -> list[float]:
    """`thresholds` ordered from the one that exits least to the one that exits most: high first for
    max-prob, cosine, patience and static (a higher bar, more patience, a deeper layer), low first for
    entropy (an exit fires below the threshold). Learn-then-Test's fixed sequence walks this order."""
    if rule not in ("max_prob", "cosine", "patience", "static", "entropy"):
        raise FreeBenchError(f"rule {rule!r} has no threshold order")
    return sorted((float(t) for t in thresholds), reverse=rule != "entropy")
