"""Divide one file set's rows among several of our splits, by image, deterministically.

Real files rarely come in our six splits (VQAv2 has none we can use; Karpathy has its own three), so
`free-bench data` divides a file set's images among the `--splits` asked for. The rule (`RULE`):
order the distinct image ids by the sha256 of the id string and cut that order at the rounded
cumulative `--fractions`. Every image, with all its rows, lands in exactly one split; each split's
share is exact to one image; and an image's split depends only on its id and the fractions, never on
the file's row order, so the division is stable across reruns and machines.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from free_bench.config import SPLITS
from free_bench.core.errors import FreeBenchError, check_choice

RULE = "sha256-order: distinct image ids sorted by sha256(image_id), cut at round(n * cumulative fraction)"

#: splits whose rows carry no labels: answers and captions are dropped (as scenes does).
UNLABELED = frozenset({"unlabeled"})

_TOLERANCE = 1e-6


def check_splits(splits: Sequence[str]) -> list[str]:
    """Our split names, each once; an error names the unknown or repeated one."""
    out: list[str] = []
    for s in splits:
        check_choice("split", s, SPLITS)
        if s in out:
            raise FreeBenchError(f"--splits lists {s!r} twice; name each split once")
        out.append(s)
    if not out:
        raise FreeBenchError("--splits is empty; name at least one split")
    return out


def check_fractions(splits: Sequence[str], fractions: Sequence[float] | None) -> list[float]:
    """One positive share per split summing to 1 (within 1e-6); equal shares when none are given."""
    if fractions is None:
        return [1.0 / len(splits)] * len(splits)
    fractions = [float(f) for f in fractions]
    if len(splits) < 2:
        raise FreeBenchError(
            f"--fractions divides rows among several --splits, but only {list(splits)} is listed; "
            "list two or more splits or drop --fractions"
        )
    if len(fractions) != len(splits):
        raise FreeBenchError(
            f"--fractions gives {len(fractions)} values for {len(splits)} --splits {list(splits)}; give one per split"
        )
    for split, f in zip(splits, fractions, strict=True):
        if not math.isfinite(f) or f <= 0:
            raise FreeBenchError(f"--fractions: the share of split {split!r} is {f}; every share must be > 0")
    total = math.fsum(fractions)
    if abs(total - 1.0) > _TOLERANCE:
        raise FreeBenchError(f"--fractions {fractions} sum to {total!r}, not 1 (within {_TOLERANCE})")
    return fractions


def divide_ids(image_ids: Sequence[str], splits: Sequence[str], fractions: Sequence[float],
               where: str) -> dict[str, str]:  # fmt: skip
    """image id -> split, by `RULE`; a split left without images is an error naming it."""
    distinct = sorted(set(image_ids), key=lambda i: (hashlib.sha256(i.encode()).hexdigest(), i))
    n = len(distinct)
    cuts, cumulative = [0], 0.0
    for f in fractions[:-1]:
        cumulative += f
        cuts.append(math.floor(n * cumulative + 0.5))
    cuts.append(n)
    out: dict[str, str] = {}
    for k, split in enumerate(splits):
        chosen = distinct[cuts[k] : cuts[k + 1]]
        if not chosen:
            raise FreeBenchError(
                f"split {split!r} gets no images: {where} has {n} distinct image(s), divided among "
                f"{list(splits)} by fractions {list(fractions)}; list fewer --splits or give {split!r} "
                "a larger --fractions share"
            )
        out.update(dict.fromkeys(chosen, split))
    return out


def label(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The rows as members of `split`: `split` set, and answers and captions dropped if it is unlabeled."""
    drop = {"answers": [], "answer": "", "captions": []} if split in UNLABELED else {}
    return [{**r, "split": split, **drop} for r in rows]


def divide_rows(rows: list[dict[str, Any]], splits: Sequence[str], fractions: Sequence[float],
                where: str) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """The rows of each split, in file order; an image's rows all go to one split."""
    if len(splits) == 1:
        return {splits[0]: label(rows, splits[0])}
    of = divide_ids([r["image_id"] for r in rows], splits, fractions, where)
    return {s: label([r for r in rows if of[r["image_id"]] == s], s) for s in splits}
