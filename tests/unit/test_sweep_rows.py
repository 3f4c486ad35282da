"""A sweep's rows: the first `max_rows`, perturbed row by row, without datasets hashing the transform
(dill's walk over its globals cost 2-3 s a sweep on Python 3.12) or writing into the dataset's folder."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from free_bench.data import perturb as P
from free_bench.data.schema import features
from free_bench.engine.sweep import SweepSpec, _rows


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
