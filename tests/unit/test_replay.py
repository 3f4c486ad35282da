"""Replays: recorded per-token depths of a live sweep, mapped by depth fraction onto a deeper backbone
and decoded there with the full model and the prefix timed beside them."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analyses.scale import compute_replay
from free_bench.core.errors import FreeBenchError
from free_bench.evaluation.replay import (
    map_layer,
    recorded_points,
    replay_point,
    target_method,
)
from free_bench.methods import get_method
from free_bench.models import load_backbone

pytestmark = pytest.mark.usefixtures("single_thread")
KEYS = {"regime": "semi", "kv_policy": "propagate", "batch_size": 1, "task": "vqa", "split": "test",
        "perturbation": "none"}  # fmt: skip


def _sweep(folder: Path, depths: dict[str, list[int]], depth: int = 2, exits_at: str = "1", mode: str = "live") -> Path:
    """A finished live sweep folder of a `depth`-layer source: one deebert point at threshold 0.5."""
    folder.mkdir(parents=True)
    rows = pd.DataFrame([{"method": "full", "threshold": float(depth), **KEYS},
                         {"method": "deebert", "threshold": 0.5, **KEYS}])  # fmt: skip
    rows.to_parquet(folder / "sweep.parquet")
    samples = pd.DataFrame([{"method": "deebert", "threshold": 0.5, "sample_id": q, "exit_layers": json.dumps(d),
                             **KEYS} for q, d in depths.items()])  # fmt: skip
    samples.to_parquet(folder / "samples.parquet")
    (folder / "manifest.json").write_text(json.dumps({"spec": {"mode": mode, "exits_at": exits_at}}))
    return folder


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from free_bench.models.random_checkpoint import save_random_blip2

    ckpt = save_random_blip2(tmp_path_factory.mktemp("bb") / "tiny", "tiny-opt")  # 4 layers
    bb = load_backbone(str(ckpt), device="cpu")
    size = bb.processor.image_processor.size
    side = size.get("height", size.get("shortest_edge", 32))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(3)]
    rows = datasets.Dataset.from_dict({"question_id": [11, 12, 13], "question": ["what color?", "how many?", "is it?"],
                                       "image": images, "answers": [["red"] * 10] * 3})  # fmt: skip
    return bb, rows


def test_recorded_points_and_layer_mapping(tmp_path: Path) -> None:
    folder = _sweep(tmp_path / "s", {"11": [1, 2, 1], "12": [2]})
    (point,) = recorded_points(folder)
    assert (point.method, point.threshold, point.exits_at, point.depth) == ("deebert", 0.5, (1,), 2)
    assert dict(point.samples) == {"11": (1, 2, 1), "12": (2,)}
    assert [map_layer(k, 2, 4) for k in (1, 2)] == [2, 4]
    with pytest.raises(FreeBenchError, match="1 of 8 maps to 1.5 of 12"):
        map_layer(1, 8, 12)
    # 24 layers onto 32: the nearest layer where the fraction falls between two, exact ones kept
    assert [map_layer(k, 24, 32, nearest=True) for k in (4, 8, 12, 16, 20, 24)] == [5, 11, 16, 21, 27, 32]
    assert [map_layer(k, 8, 12, nearest=True) for k in (1, 3, 8)] == [2, 5, 12]  # halves (1.5, 4.5) round up
    with pytest.raises(FreeBenchError, match="recorded each token's exit layer"):
        recorded_points(_sweep(tmp_path / "sim", {"11": [1]}, mode="simulated"))
    with pytest.raises(FreeBenchError, match="not a finished sweep folder: no manifest.json"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "sweep.parquet").write_bytes(b"")
        (tmp_path / "half" / "samples.parquet").write_bytes(b"")
        recorded_points(tmp_path / "half")


def test_a_replay_follows_the_mapped_depths_and_times_both_decodes(tmp_path: Path, target) -> None:
    bb, rows = target
    method = get_method("deebert")(bb, "all")
    (point,) = recorded_points(_sweep(tmp_path / "s", {"11": [1, 1, 2], "13": [1, 1]}))
    assert target_method(point, method).layers == (2,)  # exit 1 of 2 -> layer 2 of 4
    per = replay_point(point, method, rows, engines=("eager",), warmup=1, progress=False)
    assert per["sample_id"].tolist() == ["11", "13"]
    assert per["tokens"].tolist() == [3, 2]
    assert per["mean_exit_layer"].tolist() == pytest.approx([(2 + 2 + 4) / 3, 2.0])
    assert (per["cost_layers"] < per["full_cost_layers"]).all()  # half the layers skipped on most tokens
    assert (per["timer"] == "cpu_wall").all() and (per[["replay_ms", "full_ms", "prefix_ms"]] > 0).all().all()
    (summary,) = compute_replay(per.assign(model="tiny-opt")).to_dict("records")
    assert summary["questions"] == 2 and summary["tokens"] == 5
    assert summary["expected_speedup"] == pytest.approx(per["full_cost_layers"].sum() / per["cost_layers"].sum())
    assert 1 < summary["expected_with_prefix"] < summary["expected_speedup"]  # the prefix is not skipped
    assert summary["measured_speedup"] == pytest.approx(per["full_ms"].sum() / per["replay_ms"].sum())
    assert (per["mapping"] == "2->4 exact").all()


def test_a_source_whose_depth_does_not_divide_the_target_replays_at_the_nearest_layers(tmp_path, target) -> None:
    bb, rows = target
    method = get_method("deebert")(bb, "1,3")
    (point,) = recorded_points(_sweep(tmp_path / "s", {"11": [1, 2, 3]}, depth=3, exits_at="1,2"))
    with pytest.raises(FreeBenchError, match="1 of 3 maps to 1.33333 of 4"):
        target_method(point, method)
    assert target_method(point, method, nearest=True).layers == (1, 3)  # 4/3 -> 1, 8/3 -> 3
    per = replay_point(point, method, rows, engines=("eager",), warmup=0, progress=False, nearest=True)
    assert json.loads(per["exit_layers"].iloc[0]) == [1, 3, 4] and per["mapping"].iloc[0] == "3->4 nearest"


def test_what_a_replay_refuses(tmp_path: Path, target) -> None:
    bb, rows = target
    method = get_method("deebert")(bb, "2,4")
    (point,) = recorded_points(_sweep(tmp_path / "s", {"99": [1]}))
    with pytest.raises(FreeBenchError, match=r"not in the target rows, e.g. \['99'\]"):
        replay_point(point, method, rows, engines=("eager",), progress=False)
    (odd,) = recorded_points(_sweep(tmp_path / "t", {"11": [1]}, depth=4, exits_at="1"))
    with pytest.raises(FreeBenchError, match="no trained exit at layer"):
        target_method(odd, method)  # exit 1 of 4 -> layer 1 of 4, which these exits lack


def test_the_committed_replay_source_reads_as_recorded() -> None:
    """The cpu profile's live sweeps whose depths results/gpu/scale replays: three points of 200 questions."""
    root = Path(__file__).resolve().parents[2] / "results" / "gpu" / "scale" / "replay_source"
    points = recorded_points(root / "live-free-semi-b1")
    assert [p.threshold for p in points] == [0.86, 0.88, 0.9]
    for p in points:
        assert (p.method, p.exits_at, p.depth, len(p.samples)) == ("free", (2, 4, 6), 8, 200)
        assert all(set(layers) <= {2, 4, 6, 8} for _, layers in p.samples)


def test_the_committed_gpu_profile_source_reads_as_recorded() -> None:
    """The gpu profile's live sweeps replayed with nearest-layer mapping: 24 layers, exits every 4."""
    root = Path(__file__).resolve().parents[2] / "results" / "gpu" / "scale" / "replay_source_gpu"
    for name, method in [("live-free-semi-b1", "free"), ("live-pabee-semi-b1", "pabee")]:
        points = recorded_points(root / name)
        assert len(points) == 3
        for p in points:
            assert (p.method, p.exits_at, p.depth, len(p.samples)) == (method, (4, 8, 12, 16, 20), 24, 100)
            assert all(set(layers) <= {4, 8, 12, 16, 20, 24} for _, layers in p.samples)
