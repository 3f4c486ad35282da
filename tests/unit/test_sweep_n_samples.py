"""Every sweep row says how many samples its point decoded or evaluated (`n_samples`): questions for VQA,
images for captions, simulated and live, the full model's rows too; sweeps written before the column
gain it from what they recorded, never from a guess."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest
from free_bench.data.schema import features
from free_bench.evaluation.sweep import SweepSpec, run_sweep
from free_bench.evaluation.sweep_legacy import POINT_KEYS, with_n_samples
from free_bench.methods import build_method, save_method
from free_bench.models import load_backbone
from free_bench.models.random_checkpoint import save_random_blip2

pytestmark = pytest.mark.usefixtures("single_thread")
QUESTIONS = ["what color is it?", "how many are there?", "is it red?", "what shape?", "where is it?", "is it big?"]


@pytest.fixture(scope="module")
def exits(tmp_path_factory) -> Path:
    """Untrained FREE exits on a tiny random BLIP-2, beside a data folder whose test split holds six
    questions on three images (two each), with reference captions."""
    root = tmp_path_factory.mktemp("n-samples")
    bb = load_backbone(str(save_random_blip2(root / "ckpt", "tiny-opt")), device="cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    rows = datasets.Dataset.from_list([
        {"image": images[k // 2], "image_id": f"img{k // 2}", "question_id": f"q{k}", "question": q,
         "answers": ["red"] * 10, "answer": "red", "question_type": "color", "difficulty": 1,
         "captions": ["a red circle.", "a circle that is red."], "scene": "", "split": "test"}
        for k, q in enumerate(QUESTIONS)
    ], features=features())  # fmt: skip
    datasets.DatasetDict({"test": rows}).save_to_disk(str(root / "data"))
    (root / "data" / "manifest.json").write_text(json.dumps({"command": "data", "dataset_hash": "six-rows"}))
    record = Manifest("train-exits", {"regime": "semi", "data": {"folder": str(root / "data")}}, seeds=[0])
    return save_method(build_method("free", bb, [1, 2]), root / "free", record)


def _spec(exits: Path, mode: str, **over) -> SweepSpec:
    return SweepSpec(**{"method": "free", "exits": str(exits), "split": "test", "mode": mode,
                        "thresholds": (0.0, 1.0), "warmup": 0, **over})  # fmt: skip


def _counts(out: Path) -> pd.Series:
    return pd.read_parquet(out / "samples.parquet").groupby(POINT_KEYS).size()


def test_simulated_rows_count_questions_and_caption_images(exits, tmp_path) -> None:
    df = run_sweep(_spec(exits, "simulated", tasks=("vqa", "caption"), max_rows=5), tmp_path / "s", progress=False)
    n = df.groupby("task")["n_samples"].unique()
    assert n["vqa"].tolist() == [5] and n["caption"].tolist() == [3]  # 5 questions; their 3 images
    assert set(df["method"]) == {"free", "full"}  # the full model's rows carry it too
    counts = _counts(tmp_path / "s")
    for _, row in df.iterrows():
        assert row["n_samples"] == counts[tuple(row[k] for k in POINT_KEYS)]


def test_live_rows_count_every_decoded_question_whatever_the_batch(exits, tmp_path) -> None:
    df = run_sweep(_spec(exits, "live", batch_size=4, max_rows=5), tmp_path / "l", progress=False)
    assert (df["n_samples"] == 5).all() and len(df) == 3 and pd.api.types.is_integer_dtype(df["n_samples"])
    assert (pd.read_parquet(tmp_path / "l" / "sweep.parquet")["n_samples"] == 5).all()


def test_a_sweep_written_before_the_column_gains_it_from_its_samples(exits, tmp_path) -> None:
    """A finished older sweep (its table without the column) and a killed older one (its point files
    without it) are completed with the counts their samples recorded."""
    spec, out = _spec(exits, "simulated", max_rows=4), tmp_path / "old"
    run_sweep(spec, out, progress=False)
    old = pd.read_parquet(out / "sweep.parquet").drop(columns="n_samples")
    old.to_parquet(out / "sweep.parquet")
    reused = run_sweep(spec, out, progress=False)
    assert (reused["n_samples"] == 4).all() and (pd.read_parquet(out / "sweep.parquet")["n_samples"] == 4).all()
    points = sorted((out / "points").glob("vqa__*.json"))  # a simulated point: its records and samples only
    assert len(points) == 3
    for point in points:  # an older killed sweep: points without the column
        point.write_text(json.dumps([{k: v for k, v in r.items() if k != "n_samples"}
                                     for r in json.loads(point.read_text())]))  # fmt: skip
    (out / "manifest.json").unlink()  # unfinished: the tables are gathered again from the points
    assert (run_sweep(spec, out, progress=False)["n_samples"] == 4).all()


def test_a_count_without_samples_is_an_error_not_a_guess() -> None:
    row = {"method": "free", "regime": "semi", "kv_policy": "propagate", "threshold": 0.5, "batch_size": 1,
           "task": "vqa", "split": "test", "perturbation": "none"}  # fmt: skip
    table = pd.DataFrame([row, {**row, "threshold": 0.7}])
    samples = pd.DataFrame([{**row, "sample_id": str(k)} for k in range(3)])
    with pytest.raises(FreeBenchError, match="without samples"):
        with_n_samples(table, samples)
    assert with_n_samples(table.iloc[:1], samples)["n_samples"].tolist() == [3]
