"""VQA questions (graded difficulty) and reference captions for a scene.

Generation decides each answer constructively; `answer_question` re-derives it from the question
text and the object list alone, so a test can check the two agree on every generated row.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from free_bench.data.scenes import COLORS, SHAPES, SIZES, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")
FAMILIES: dict[str, int] = {"exist": 1, "color": 2, "shape": 2, "size": 2, "count": 3, "relation": 4}
_FAMILY_WEIGHTS = {"exist": 0.2, "color": 0.14, "shape": 0.14, "size": 0.12, "count": 0.2, "relation": 0.2}
_MARGIN = 0.1  # objects closer than this (in [0,1] units) on an axis are neither left nor right (same grid column/row)


@dataclass(frozen=True)
class Question:
    text: str
    answer: str  # canonical answer
    question_type: str
    difficulty: int


def plural(shape: str) -> str:
    return shape + "es" if shape.endswith("s") else shape + "s"


def _in_direction(anchor: SceneObject, other: SceneObject, relation: str) -> bool:
    dx, dy = other.x - anchor.x, other.y - anchor.y
    return {
        "left of": dx < -_MARGIN,
        "right of": dx > _MARGIN,
        "above": dy < -_MARGIN,
        "below": dy > _MARGIN,
    }[relation]


def _unique(objects: list[SceneObject], **attrs: str) -> SceneObject | None:
    hits = [o for o in objects if all(getattr(o, k) == v for k, v in attrs.items())]
    return hits[0] if len(hits) == 1 else None


def _relation_target(objects: list[SceneObject], anchor: SceneObject, relation: str) -> SceneObject | None:
    hits = [o for o in objects if o is not anchor and _in_direction(anchor, o, relation)]
    return hits[0] if len(hits) == 1 else None


def make_question(
    rng: np.random.Generator, objects: list[SceneObject], focus: list[SceneObject] | None = None
) -> Question:
    """Sample a feasible question; `focus` objects (e.g. novel pairs) are preferred as subjects."""
    families = list(_FAMILY_WEIGHTS)
    probs = np.array([_FAMILY_WEIGHTS[f] for f in families])
    for _ in range(20):
        family = families[int(rng.choice(len(families), p=probs / probs.sum()))]
        for _ in range(10):  # several subjects before giving up on a family: keeps the mix close to weights
            pool = focus if focus and rng.random() < 0.8 else objects
            subject = pool[int(rng.integers(len(pool)))]
            q = _try_family(rng, family, objects, subject)
            if q is not None:
                return Question(q[0], q[1], family, FAMILIES[family])
    raise RuntimeError("no feasible question for this scene")


def _try_family(
    rng: np.random.Generator, family: str, objects: list[SceneObject], s: SceneObject
) -> tuple[str, str] | None:
    if family == "exist":
        if rng.random() < 0.5:
            return f"is there a {s.color} {s.shape}?", "yes"
        color, shape = list(COLORS)[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(len(SHAPES)))]
        if any(o.color == color and o.shape == shape for o in objects):
            return None
        return f"is there a {color} {shape}?", "no"
    if family == "color" and _unique(objects, shape=s.shape):
        return f"what color is the {s.shape}?", s.color
    if family == "shape" and _unique(objects, color=s.color):
        return f"what shape is the {s.color} object?", s.shape
    if family == "size" and _unique(objects, color=s.color, shape=s.shape):
        return f"what size is the {s.color} {s.shape}?", s.size
    if family == "count":
        kind = int(rng.integers(3))
        if kind == 0:
            shape = SHAPES[int(rng.integers(len(SHAPES)))] if rng.random() < 0.3 else s.shape
            return f"how many {plural(shape)} are there?", str(sum(o.shape == shape for o in objects))
        if kind == 1:
            return f"how many {s.color} objects are there?", str(sum(o.color == s.color for o in objects))
        return "how many objects are there?", str(len(objects))
    if family == "relation" and _unique(objects, color=s.color, shape=s.shape):
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        target = _relation_target(objects, s, relation)
        if target is None:
            return None
        if rng.random() < 0.5:
            return f"what shape is {relation} the {s.color} {s.shape}?", target.shape
        return f"what color is the object {relation} the {s.color} {s.shape}?", target.color
    return None


_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"is there a (\w+) (\w+)\?"), "exist"),
    (re.compile(r"what color is the (\w+)\?"), "color"),
    (re.compile(r"what shape is the (\w+) object\?"), "shape"),
    (re.compile(r"what size is the (\w+) (\w+)\?"), "size"),
    (re.compile(r"how many (\w+) objects are there\?"), "count_color"),
    (re.compile(r"how many objects are there\?"), "count_all"),
    (re.compile(r"how many (\w+) are there\?"), "count_shape"),
    (re.compile(r"what shape is (left of|right of|above|below) the (\w+) (\w+)\?"), "rel_shape"),
    (re.compile(r"what color is the object (left of|right of|above|below) the (\w+) (\w+)\?"), "rel_color"),
]


def answer_question(text: str, objects: list[SceneObject]) -> str:
    """Re-derive the canonical answer from the question text and the scene alone."""
    for pattern, kind in _PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        g = m.groups()
        if kind == "exist":
            return "yes" if any(o.color == g[0] and o.shape == g[1] for o in objects) else "no"
        if kind == "color":
            return _only(objects, shape=g[0]).color
        if kind == "shape":
            return _only(objects, color=g[0]).shape
        if kind == "size":
            return _only(objects, color=g[0], shape=g[1]).size
        if kind == "count_color":
            return str(sum(o.color == g[0] for o in objects))
        if kind == "count_all":
            return str(len(objects))
        if kind == "count_shape":
            return str(sum(plural(o.shape) == g[0] for o in objects))
        anchor = _only(objects, color=g[1], shape=g[2])
        hits = [o for o in objects if o is not anchor and _in_direction(anchor, o, g[0])]
        if len(hits) != 1:
            raise ValueError(f"relation question {text!r} is ambiguous for this scene")
        return hits[0].shape if kind == "rel_shape" else hits[0].color
    raise ValueError(f"not a scenes question: {text!r}")


def _only(objects: list[SceneObject], **attrs: str) -> SceneObject:
    hit = _unique(objects, **attrs)
    if hit is None:
        raise ValueError(f"no unique object with {attrs}")
    return hit


def human_answers(rng: np.random.Generator, q: Question, n: int = 10) -> list[str]:
    """Ten VQA-style answers: harmless variants ('2'/'two', 'a circle', 'Yes.') and rare slips."""
    out = []
    for _ in range(n):
        a = q.answer
        roll = rng.random()
        if q.question_type == "count" and roll < 0.3:
            a = NUMBER_WORDS[int(a)]
        elif q.question_type in ("shape", "relation") and a in SHAPES and roll < 0.2:
            a = "a " + a
        elif a in ("yes", "no") and roll < 0.2:
            a = a.capitalize() + "."
        elif q.question_type == "size" and roll < 0.1:
            a = {"large": "big", "small": "little"}[a]
        out.append(a)
    if rng.random() < 0.1:  # one careless annotator: a wrong but plausible answer
        out[int(rng.integers(n))] = _plausible_wrong(rng, q)
    return out


def _plausible_wrong(rng: np.random.Generator, q: Question) -> str:
    pools = {"count": [str(i) for i in range(7)], "exist": ["yes", "no"], "size": list(SIZES)}
    pool = pools.get(q.question_type) or (list(COLORS) if q.answer in COLORS else list(SHAPES))
    choices = [a for a in pool if a != q.answer]
    return choices[int(rng.integers(len(choices)))]


def captions(objects: list[SceneObject]) -> list[str]:
    """Four differently phrased references: object list, counts, relations, a summary."""
    objs = sorted(objects, key=lambda o: o.x)
    described = [f"a {o.size} {o.color} {o.shape}" for o in objs]
    listing = _join(described)
    by_shape = Counter(o.shape for o in objs)
    counted = _join([f"{NUMBER_WORDS[k]} {s if k == 1 else plural(s)}" for s, k in sorted(by_shape.items())])
    n = len(objs)
    caps = [f"{listing} on a grey background."]
    caps.append(f"{NUMBER_WORDS[n]} {'object' if n == 1 else 'objects'}: {counted}.")
    if n >= 2:
        pairs = [f"a {a.color} {a.shape} left of a {b.color} {b.shape}" for a, b in itertools.pairwise(objs)]
        caps.append(f"{_join(pairs[:2])}.")
    else:
        caps.append(f"a single {objs[0].color} {objs[0].shape} alone in the picture.")
    colors = sorted({o.color for o in objs})
    caps.append(f"a picture with {NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'} in {_join(colors)}.")
    return caps


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
