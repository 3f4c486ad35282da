"""A sweep's rows: the first `max_rows`, perturbed row by row, without datasets hashing the transform
(dill's walk over its globals cost 2-3 s a sweep on Python 3.12) or writing into the dataset's folder."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from free_bench.data import perturb as P
from free_bench.data.schema import features
from free_bench.evaluation.sweep import SweepSpec, _rows


def _split(n: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    rows = [
        {"image": Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "RGB"),
         "image_id": f"i{k}", "question_id": f"q{k}", "question": "what color is the circle?",
         "answers": ["red"] * 10, "answer": "red", "question_type": "color", "difficulty": 2,
         "captions": ["a red circle."], "scene": "", "split": "test"}
        for k in range(n)
    ]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=features())


@pytest.mark.parametrize("perturb", ["gaussian_noise:2", "typo:3"])
def test_perturbed_rows_equal_the_row_transform_and_touch_no_files(tmp_path, monkeypatch, perturb) -> None:
    folder = tmp_path / "test"
    _split(5).save_to_disk(str(folder))
    split = datasets.load_from_disk(str(folder))
    before = sorted(p.name for p in folder.iterdir())

    hash_value = datasets.fingerprint.Hasher.hash

    def no_function_hashing(value):
        if callable(value):
            raise AssertionError(f"datasets hashed the transform {value!r}")
        return hash_value(value)

    monkeypatch.setattr(datasets.fingerprint.Hasher, "hash", staticmethod(no_function_hashing))
    spec = SweepSpec(method="free", exits="x", split="test", mode="live", thresholds=(0.5,), max_rows=3,
                     perturb=perturb)  # fmt: skip
    got = _rows(spec, split, "vqa")
    assert len(got) == 3 and sorted(p.name for p in folder.iterdir()) == before
    name, severity = P.parse_spec(perturb)
    for row, out in zip(split.select(range(3)), got, strict=True):
        want = P.apply_to_row(row, name, severity)
        assert out["question"] == want["question"] and out["question_id"] == row["question_id"]
        assert np.array_equal(
            np.asarray(out["image"].convert("RGB")), np.asarray(want["image"].convert("RGB"))
        )


def test_perturbed_rows_are_made_once_for_every_method(tmp_path, monkeypatch) -> None:
    """The robustness grid sweeps each input with every method: the same rows are perturbed once."""
    _split(4).save_to_disk(str(tmp_path / "test"))
    split = datasets.load_from_disk(str(tmp_path / "test"))
    calls = []
    real = P.apply_to_row
    monkeypatch.setattr(P, "apply_to_row", lambda row, *a: calls.append(row["question_id"]) or real(row, *a))
    spec = SweepSpec(method="free", exits="x", split="test", mode="live", thresholds=(0.5,), max_rows=3,
                     perturb="gaussian_noise:4")  # fmt: skip
    first = _rows(spec, split, "vqa")
    again = _rows(
        SweepSpec(**{**spec.__dict__, "method": "deebert"}),
        datasets.load_from_disk(str(tmp_path / "test")),
        "vqa",
    )
    assert again is first and len(calls) == 3
    other = _rows(SweepSpec(**{**spec.__dict__, "perturb": "gaussian_noise:5"}), split, "vqa")
    fewer = _rows(SweepSpec(**{**spec.__dict__, "max_rows": 2}), split, "vqa")
    assert other is not first and len(fewer) == 2 and len(calls) == 3 + 3 + 2
