"""Input perturbations for robustness runs, ImageNet-C style: named corruptions at severities 1..5.

Every perturbation is a pure function of (input, severity, seed, name, key): the RNG is derived from
a SHA-256 of those values, so a row gets the same corruption whatever order rows are processed in,
in any process. Per-level parameters (index = severity - 1; strength grows with severity):

=================  =====================================================  ==============================
name               parameter                                              severity 1 .. 5
=================  =====================================================  ==============================
gaussian_noise     noise sigma, pixel values in [0, 1]                    .04 .07 .10 .14 .20
blur               Gaussian blur radius in px per 224 px of shorter side  1 2 3 4 6
brightness         PIL brightness factor (darkening, "low light")         .8 .65 .5 .35 .2
contrast           PIL contrast factor (blend towards mean grey)          .6 .45 .3 .2 .1
jpeg               JPEG quality                                           30 20 15 10 5
occlusion          area fraction of one grey (128) rectangle, random pos  .05 .10 .20 .30 .40
typo               fraction of letters hit by swap/drop/insert/replace    .03 .06 .10 .15 .20
word_drop          fraction of words dropped (at least 1, keeps >= 1)     .10 .20 .30 .40 .50
=================  =====================================================  ==============================
"""

from __future__ import annotations

import hashlib
import io
import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from free_bench.config import SEVERITIES
from free_bench.core.errors import FreeBenchError, check_choice

NOISE_SIGMA = (0.04, 0.07, 0.10, 0.14, 0.20)
BLUR_RADIUS_AT_224 = (1.0, 2.0, 3.0, 4.0, 6.0)
BRIGHTNESS_FACTOR = (0.8, 0.65, 0.5, 0.35, 0.2)
CONTRAST_FACTOR = (0.6, 0.45, 0.3, 0.2, 0.1)
JPEG_QUALITY = (30, 20, 15, 10, 5)
OCCLUSION_AREA = (0.05, 0.10, 0.20, 0.30, 0.40)
OCCLUSION_FILL = (128, 128, 128)
TYPO_RATE = (0.03, 0.06, 0.10, 0.15, 0.20)
WORD_DROP_RATE = (0.10, 0.20, 0.30, 0.40, 0.50)

Target = Literal["image", "question"]


@dataclass(frozen=True)
class Perturbation:
    """A named corruption; `fn(value, severity, rng)` returns the corrupted value."""

    name: str
    target: Target
    fn: Callable[[Any, int, np.random.Generator], Any]


def _gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = x + rng.normal(0.0, NOISE_SIGMA[severity - 1], size=x.shape)
    return Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def _blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    radius = BLUR_RADIUS_AT_224[severity - 1] * min(image.size) / 224.0
    return image.filter(ImageFilter.GaussianBlur(radius))


def _brightness(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(BRIGHTNESS_FACTOR[severity - 1])


def _contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(CONTRAST_FACTOR[severity - 1])


def _jpeg(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY[severity - 1])
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _occlusion(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """One rectangle with the image's aspect ratio covering the level's area fraction."""
    w, h = image.size
    scale = math.sqrt(OCCLUSION_AREA[severity - 1])
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    out = image.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, x0 + rw - 1, y0 + rh - 1), fill=OCCLUSION_FILL)
    return out


def _typo(question: str, severity: int, rng: np.random.Generator) -> str:
    """Hit ceil(rate * letters) distinct letters, each with a random swap/drop/insert/replace."""
    chars = list(question)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    if not letters:
        return question
    n = min(len(letters), math.ceil(TYPO_RATE[severity - 1] * len(letters)))
    alphabet = string.ascii_lowercase
    # Right to left, so an edit never shifts the positions still to be edited.
    for i in sorted(rng.choice(letters, size=n, replace=False).tolist(), reverse=True):
        op = rng.choice(("swap", "drop", "insert", "replace"))
        if op == "swap" and i + 1 < len(chars) and chars[i + 1] != chars[i]:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == "drop":
            del chars[i]
        elif op == "insert":
            chars.insert(i, alphabet[int(rng.integers(len(alphabet)))])
        else:  # replace (also the fallback for a swap that would change nothing)
            choices = [a for a in alphabet if a != chars[i].lower()]
            chars[i] = choices[int(rng.integers(len(choices)))]
    return "".join(chars)


def _word_drop(question: str, severity: int, rng: np.random.Generator) -> str:
    """Drop round(rate * words) words (at least one), always keeping one."""
    words = question.split()
    if len(words) < 2:
        return question
    n = min(len(words) - 1, max(1, math.floor(WORD_DROP_RATE[severity - 1] * len(words) + 0.5)))
    dropped = set(rng.choice(len(words), size=n, replace=False).tolist())
    return " ".join(w for i, w in enumerate(words) if i not in dropped)


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("gaussian_noise", "image", _gaussian_noise),
        Perturbation("blur", "image", _blur),
        Perturbation("brightness", "image", _brightness),
        Perturbation("contrast", "image", _contrast),
        Perturbation("jpeg", "image", _jpeg),
        Perturbation("occlusion", "image", _occlusion),
        Perturbation("typo", "question", _typo),
        Perturbation("word_drop", "question", _word_drop),
    )
}


def available() -> list[str]:
    """Sorted names of all perturbations."""
    return sorted(PERTURBATIONS)


def _check(name: str, severity: Any) -> Perturbation:
    check_choice("perturbation", name, available())
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise FreeBenchError(f"perturbation severity must be an integer 1..5, got {severity!r}")
    return PERTURBATIONS[name]


def _rng(seed: int, name: str, severity: int, key: str) -> np.random.Generator:
    """A generator from a stable hash, identical across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}\x1f{name}\x1f{severity}\x1f{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def perturb(
    name: str,
    severity: int,
    *,
    image: Image.Image | None = None,
    question: str | None = None,
    seed: int = 0,
    key: str = "",
) -> Image.Image | str:
    """Apply perturbation `name` at `severity` to the image or the question it targets."""
    p = _check(name, severity)
    if p.target == "image":
        if not isinstance(image, Image.Image):
            raise FreeBenchError(
                f"perturbation {name!r} targets the image; pass image=<PIL image>, got {type(image).__name__}"
            )
        value: Any = image.convert("RGB")
    else:
        if not isinstance(question, str):
            raise FreeBenchError(
                f"perturbation {name!r} targets the question; pass question=<str>, "
                f"got {type(question).__name__}"
            )
        value = question
    return p.fn(value, severity, _rng(seed, name, severity, key))


def parse_spec(spec: str) -> tuple[str, int]:
    """Parse 'name:severity' (e.g. 'gaussian_noise:3') and validate both parts."""
    name, sep, level = spec.strip().partition(":")
    if not sep or not level.strip().isdigit():
        raise FreeBenchError(
            f"bad perturbation spec {spec!r}; expected NAME:SEVERITY with SEVERITY 1..5, "
            f"e.g. 'gaussian_noise:3' (names: {', '.join(available())})"
        )
    severity = int(level)
    _check(name.strip(), severity)
    return name.strip(), severity


def apply_to_row(row: dict[str, Any], name: str, severity: int, seed: int = 0) -> dict[str, Any]:
    """A copy of a schema row with its image or question perturbed, keyed by its question_id."""
    p = _check(name, severity)
    if "question_id" not in row:
        raise FreeBenchError("row has no 'question_id' field; perturbations are keyed by it")
    out = dict(row)
    key = str(row["question_id"])
    if p.target == "image":
        image = row.get("image")
        if isinstance(image, dict):  # an undecoded datasets.Image value {"bytes", "path"}
            image = datasets.Image().decode_example(image)
        out["image"] = perturb(name, severity, image=image, seed=seed, key=key)
    else:
        out["question"] = perturb(name, severity, question=row.get("question"), seed=seed, key=key)
    return out
