"""Scenes exported in the official VQAv2 / Karpathy layouts read back through the real loaders, row for row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest

from free_bench.cli.app import main
from free_bench.config import SPLITS
from free_bench.core.errors import FreeBenchError
from free_bench.data import export
from free_bench.data.export import export_config, write_export
from free_bench.data.folder import build_dataset, dataset_config


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "free_bench", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def scenes() -> datasets.DatasetDict:
    return build_dataset(dataset_config("scenes", profile="smoke", seed=0))


@pytest.fixture(scope="module", params=["vqav2", "coco-karpathy"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "D"
    res = _cli(
        "data", "--dataset", "scenes", "--profile", "smoke", "--export", request.param, "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    return request.param, out


def _bytes(d: datasets.Dataset) -> list[bytes]:
    return d.with_format("arrow")[:].column("image").combine_chunks().field("bytes").to_pylist()


def _load_back(fmt: str, out: Path, split: str, dest: Path) -> datasets.Dataset:
    """`free-bench data` (in-process) on one exported split, as a user loads real files."""
    if fmt == "vqav2":
        files = ["--questions", str(out / split / "questions.json"), "--images", str(out / split / "images")]
        if split != "unlabeled":
            files += ["--annotations", str(out / split / "annotations.json")]
        args = ["--dataset", "vqav2", *files, "--splits", split]
    else:
        karpathy = ["--annotations", str(out / split / "dataset_coco.json"), "--images", str(out / split)]
        source = [] if split in ("train", "val", "test") else ["--source-split", "test"]
        args = ["--dataset", "coco-karpathy", *karpathy, *source, "--splits", split]
    assert main(["data", *args, "--out", str(dest)]) == 0
    return datasets.load_from_disk(str(dest))[split]


def _first_per_image(d: datasets.Dataset) -> list[int]:
    seen: dict[str, int] = {}
    for i, image_id in enumerate(d["image_id"]):
        seen.setdefault(image_id, i)
    return list(seen.values())


@pytest.mark.parametrize("split", SPLITS)
def test_round_trip_row_for_row(exported: tuple[str, Path], scenes: datasets.DatasetDict, split: str,
                                tmp_path: Path) -> None:  # fmt: skip
    fmt, out = exported
    back = _load_back(fmt, out, split, tmp_path / "X")
    ids = json.loads((out / "export.json").read_text())["ids"][split]
    want = scenes[split]
    if fmt == "coco-karpathy":
        want = want.select(_first_per_image(want))
        assert back["captions"] == want["captions"] and set(back["question_type"]) == {"caption"}
    else:
        assert back["question"] == want["question"]
        assert back["answers"] == want["answers"] and back["answer"] == want["answer"]
        assert [ids["question_ids"][q] for q in back["question_id"]] == list(want["question_id"])
    assert [ids["image_ids"][i] for i in back["image_id"]] == list(want["image_id"])
    assert set(back["split"]) == {split}
    assert _bytes(back) == _bytes(want)  # the PNG files are the scenes bytes, unchanged
    for got, expected in zip(back.select(range(3))["image"], want.select(range(3))["image"], strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_layout_and_ids(exported: tuple[str, Path]) -> None:
    fmt, out = exported
    record = json.loads((out / "export.json").read_text())
    assert (record["profile"], record["seed"], record["splits"], record["format"]) == (
        "smoke",
        0,
        list(SPLITS),
        fmt,
    )
    image_ids = [int(i) for s in SPLITS for i in record["ids"][s]["image_ids"]]
    assert len(image_ids) == len(set(image_ids))
    test = out / "test"
    names = sorted(p.name for p in (test / "images").iterdir())
    assert names[0] == "COCO_test2014_000004000000.png" and len(names) == len(
        record["ids"]["test"]["image_ids"]
    )
    if fmt == "vqav2":
        q = json.loads((test / "questions.json").read_text())
        assert (q["task_type"], q["data_type"], q["data_subtype"]) == ("Open-Ended", "mscoco", "test2014")
        assert set(q["questions"][0]) == {"image_id", "question", "question_id"}
        ann = json.loads((test / "annotations.json").read_text())["annotations"]
        assert {a["answer_type"] for a in ann if a["question_type"] == "exist"} == {"yes/no"}
        assert {a["answer_type"] for a in ann if a["question_type"] == "count"} == {"number"}
        assert {a["answer_type"] for a in ann if a["question_type"] == "color"} == {"other"}
        assert [x["answer_id"] for x in ann[0]["answers"]] == list(range(1, 11))
        assert not (out / "unlabeled" / "annotations.json").exists()
    else:
        doc = json.loads((out / "exit_train" / "dataset_coco.json").read_text())
        assert doc["dataset"] == "coco" and {r["split"] for r in doc["images"]} == {"test"}
        rec = doc["images"][0]
        assert rec["filepath"] == "images" and rec["sentids"] == [s["sentid"] for s in rec["sentences"]]
        assert {
            r["split"] for r in json.loads((out / "val" / "dataset_coco.json").read_text())["images"]
        } == {"val"}


def test_cli_load_back_as_documented(tmp_path: Path) -> None:
    out = tmp_path / "D"
    res = _cli("data", "--dataset", "scenes", "--splits", "test", "--export", "vqav2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "test"]
    t = out / "test"
    res = _cli("data", "--dataset", "vqav2", "--questions", str(t / "questions.json"), "--annotations",
               str(t / "annotations.json"), "--images", str(t / "images"), "--splits", "test", "--out", str(tmp_path / "X"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(datasets.load_from_disk(str(tmp_path / "X"))["test"]) > 0


def test_rerun_reuses_other_settings_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "D"
    config = export_config("vqav2", splits=["val"])
    assert write_export(out, config) is not None
    assert write_export(out, config) is None
    with pytest.raises(FreeBenchError, match=r"seed: 0 recorded, 1 asked.*--overwrite"):
        write_export(out, export_config("vqav2", seed=1, splits=["val"]))
    karpathy = export_config("coco-karpathy", splits=["val"])
    assert write_export(out, karpathy, overwrite=True) is not None
    assert sorted(p.name for p in (out / "val").iterdir()) == ["dataset_coco.json", "images"]

    def fail(self: Any, path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(export.Manifest, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        write_export(tmp_path / "new" / "E", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]


def test_export_refuses_other_folders_and_flags(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["data", "--splits", "val", "--out", str(data)]) == 0
    with pytest.raises(FreeBenchError, match="is not a scenes export written by free-bench"):
        write_export(data, export_config("vqav2", splits=["val"]), overwrite=True)
    with pytest.raises(FreeBenchError, match="export format"):
        export_config("coco")
    assert main(["data", "--dataset", "vqav2", "--export", "vqav2", "--out", str(tmp_path / "x")]) == 2
    assert main(["data", "--export", "vqav2", "--keep-first", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
