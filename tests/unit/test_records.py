"""Records: schema validation, atomic writes, manifest provenance."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import SWEEP, Manifest, atomic_path, write_json, write_parquet


def _row(**over):
    row = dict(
        method="free",
        regime="semi",
        engine="eager",
        kv_policy="propagate",
        threshold=0.9,
        batch_size=1,
        task="vqa",
        split="val",
        perturbation="none",
        metric="vqa_accuracy",
        value=0.8,
        expected_speedup=1.4,
        measured_speedup=1.3,
        latency_ms_median=2.0,
        latency_ms_p90=2.5,
        mean_exit_layer=10.5,
        exit_layer_hist='{"8": 3}',
        timer="cuda_event",
        device="NVIDIA H200",
        n_samples=200,
    )
    row.update(over)
    return row


def test_sweep_schema_roundtrip(tmp_path):
    df = pd.DataFrame([_row(), _row(threshold=0.5, value=0.7)])
    path = write_parquet(df, tmp_path / "sweep.parquet", SWEEP)
    back = pd.read_parquet(path)
    assert list(back.columns[: len(SWEEP.names)]) == SWEEP.names
    assert back["value"].tolist() == [0.8, 0.7]


def test_schema_names_missing_column_and_bad_dtype(tmp_path):
    with pytest.raises(FreeBenchError, match="timer"):
        write_parquet(pd.DataFrame([_row()]).drop(columns="timer"), tmp_path / "x.parquet", SWEEP)
    with pytest.raises(FreeBenchError, match="batch_size"):
        write_parquet(pd.DataFrame([_row(batch_size=1.5)]), tmp_path / "x.parquet", SWEEP)
    with pytest.raises(FreeBenchError, match="n_samples"):
        write_parquet(pd.DataFrame([_row()]).drop(columns="n_samples"), tmp_path / "x.parquet", SWEEP)
    assert not list(tmp_path.iterdir())  # nothing written


def test_atomic_write_keeps_old_file_when_killed(tmp_path):
    target = tmp_path / "a.json"
    write_json({"v": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_manifest_fields(tmp_path):
    m = Manifest("data", {"profile": "smoke"}, seeds=[0], dataset_hash="abc")
    data = json.loads(m.write(tmp_path / "manifest.json").read_text())
    for key in (
        "config",
        "git_commit",
        "git_dirty",
        "source_hash",
        "libraries",
        "device",
        "seeds",
        "dataset_hash",
        "start_time",
        "end_time",
    ):
        assert key in data
    assert data["libraries"]["torch"].startswith("2.13")


def test_source_hash_names_the_code(tmp_path):
    from free_bench.core.records import source_hash

    (tmp_path / "free_bench" / "sub").mkdir(parents=True)
    (tmp_path / "analyses").mkdir()
    (tmp_path / "free_bench" / "sub" / "a.py").write_text("x = 1\n")
    (tmp_path / "analyses" / "b.py").write_text("y = 2\n")
    (tmp_path / "free_bench" / "notes.txt").write_text("not code")
    first = source_hash(tmp_path)
    assert len(first) == 16 and source_hash(tmp_path) == first
    (tmp_path / "free_bench" / "notes.txt").write_text("changed, still not code")
    assert source_hash(tmp_path) == first
    (tmp_path / "analyses" / "b.py").write_text("y = 3\n")
    assert source_hash(tmp_path) != first


def test_source_hash_covers_the_package_sources():
    """By default the hash covers this checkout's free_bench/ and analyses/: never the hash of no input."""
    import hashlib

    from free_bench.core.records import source_hash

    assert source_hash() != hashlib.sha256().hexdigest()[:16]
