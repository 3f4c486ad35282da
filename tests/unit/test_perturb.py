"""Perturbations: registry, determinism, every name x severity, monotone strength, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from free_bench.core.errors import FreeBenchError
from free_bench.data import perturb as P

IMAGE_NAMES = [n for n, p in P.PERTURBATIONS.items() if p.target == "image"]
QUESTION_NAMES = [n for n, p in P.PERTURBATIONS.items() if p.target == "question"]
RANDOM_NAMES = ["gaussian_noise", "occlusion", "typo", "word_drop"]
QUESTION = "what is the color of the large metal cube left of the small rubber sphere behind the cylinder?"


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A textured mid-range image, so every corruption has something to change."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:80]
    base = np.stack([x * 2 + 40, y * 2 + 60, (x + y) + 50], axis=-1).astype(np.float64)
    base += rng.integers(-30, 30, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_registry() -> None:
    assert P.available() == sorted(P.PERTURBATIONS)
    assert set(IMAGE_NAMES) == {"gaussian_noise", "blur", "brightness", "contrast", "jpeg", "occlusion"}
    assert set(QUESTION_NAMES) == {"typo", "word_drop"}
    with pytest.raises(AttributeError):
        P.PERTURBATIONS["blur"].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("severity", P.SEVERITIES)
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_image_perturbation_runs(image: Image.Image, name: str, severity: int) -> None:
    out = P.perturb(name, severity, image=image, seed=1, key="k")
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == image.size
    assert _mad(out, image) > 0
    assert _mad(P.perturb(name, severity, image=image, seed=1, key="k"), out) == 0  # deterministic


@pytest.mark.parametrize("severity", P.SEVERITIES)
@pytest.mark.parametrize("name", QUESTION_NAMES)
def test_every_question_perturbation_runs(name: str, severity: int) -> None:
    out = P.perturb(name, severity, question=QUESTION, seed=1, key="k")
    assert isinstance(out, str) and out != QUESTION
    assert P.perturb(name, severity, question=QUESTION, seed=1, key="k") == out


def test_non_rgb_input_is_converted(image: Image.Image) -> None:
    out = P.perturb("blur", 2, image=image.convert("L"))
    assert out.mode == "RGB"


@pytest.mark.parametrize("name", RANDOM_NAMES)
def test_key_and_seed_change_random_output(image: Image.Image, name: str) -> None:
    kw = {"image": image} if name in IMAGE_NAMES else {"question": QUESTION}

    def run(seed: int, key: str) -> bytes:
        out = P.perturb(name, 3, seed=seed, key=key, **kw)
        return out.encode() if isinstance(out, str) else out.tobytes()

    assert run(0, "a") == run(0, "a")
    assert len({run(0, k) for k in "abcdef"}) > 1
    assert len({run(s, "a") for s in range(6)}) > 1


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_image_severity_monotone(image: Image.Image, name: str) -> None:
    """Mean abs difference to the clean image grows with severity (averaged over keys if random)."""
    keys = [str(i) for i in range(4)] if name in RANDOM_NAMES else [""]
    strength = [
        np.mean([_mad(P.perturb(name, s, image=image, key=k), image) for k in keys]) for s in P.SEVERITIES
    ]
    assert all(a < b for a, b in zip(strength, strength[1:], strict=False)), strength


def test_question_severity_monotone() -> None:
    keys = [str(i) for i in range(20)]
    typo = [
        np.mean([_edit_distance(P.perturb("typo", s, question=QUESTION, key=k), QUESTION) for k in keys])
        for s in P.SEVERITIES
    ]
    assert all(a < b for a, b in zip(typo, typo[1:], strict=False)), typo
    n_words = len(QUESTION.split())
    dropped = [
        n_words - len(P.perturb("word_drop", s, question=QUESTION, key="x").split()) for s in P.SEVERITIES
    ]
    assert all(a < b for a, b in zip(dropped, dropped[1:], strict=False)), dropped


def test_word_drop_keeps_order_and_a_word() -> None:
    out = P.perturb("word_drop", 5, question="is it red?")
    words = "is it red?".split()
    assert 1 <= len(out.split()) < 3 and [w for w in words if w in out.split()] == out.split()
    assert P.perturb("word_drop", 5, question="red?") == "red?"
    assert P.perturb("typo", 5, question="") == ""


def test_jpeg_output_is_decoded_rgb(image: Image.Image) -> None:
    out = P.perturb("jpeg", 5, image=image)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    assert out.mode == "RGB"


@pytest.mark.parametrize("bad", ["nope", "Blur", ""])
def test_unknown_name_lists_valid(image: Image.Image, bad: str) -> None:
    with pytest.raises(FreeBenchError, match="gaussian_noise") as err:
        P.perturb(bad, 1, image=image)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3"])
def test_bad_severity(image: Image.Image, severity: object) -> None:
    with pytest.raises(FreeBenchError, match="1..5"):
        P.perturb("blur", severity, image=image)  # type: ignore[arg-type]


def test_wrong_target(image: Image.Image) -> None:
    with pytest.raises(FreeBenchError, match="image"):
        P.perturb("blur", 1, question="what?")
    with pytest.raises(FreeBenchError, match="question"):
        P.perturb("typo", 1, image=image)


def test_parse_spec() -> None:
    assert P.parse_spec("gaussian_noise:3") == ("gaussian_noise", 3)
    assert P.parse_spec(" typo:5 ") == ("typo", 5)
    for bad in ["gaussian_noise", "gaussian_noise:", "gaussian_noise:x", "blur:0", "blur:6", "fog:2"]:
        with pytest.raises(FreeBenchError):
            P.parse_spec(bad)


def test_apply_to_row_is_keyed_by_question_id(image: Image.Image) -> None:
    rows = [{"question_id": str(i), "image": image, "question": QUESTION, "answer": "red"} for i in range(3)]
    forward = [P.apply_to_row(r, "gaussian_noise", 2, seed=7) for r in rows]
    backward = [P.apply_to_row(r, "gaussian_noise", 2, seed=7) for r in reversed(rows)][::-1]
    for f, b, r in zip(forward, backward, rows, strict=True):
        assert f["image"].tobytes() == b["image"].tobytes()
        assert f["question"] == r["question"] and f["answer"] == "red"
        assert r["image"] is image  # input row untouched
    assert forward[0]["image"].tobytes() != forward[1]["image"].tobytes()
    typo = P.apply_to_row(rows[0], "typo", 3, seed=7)
    assert typo["question"] != QUESTION and typo["image"] is image


def test_apply_to_row_undecoded_image(image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    row = {"question_id": "q1", "image": {"bytes": buf.getvalue(), "path": None}, "question": ""}
    assert P.apply_to_row(row, "contrast", 3, seed=0)["image"].size == image.size
    with pytest.raises(FreeBenchError, match="question_id"):
        P.apply_to_row({"image": image}, "blur", 1, seed=0)
