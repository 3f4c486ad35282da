"""Real-data loaders on tiny fixture files in the real COCO Karpathy and VQAv2 formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from free_bench.core.errors import FreeBenchError
from free_bench.data import schema
from free_bench.data.loaders import load_coco_karpathy, load_vqav2


def _write_image(path: Path, mode: str = "RGB", color: Any = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), color).save(path)
    return path


def _write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _karpathy_record(cocoid: int, split: str, filepath: str = "val2014") -> dict[str, Any]:
    return {
        "filepath": filepath,
        "filename": f"COCO_{filepath}_{cocoid:012d}.jpg",
        "imgid": cocoid + 1000,
        "split": split,
        "sentences": [{"raw": f"Caption one of {cocoid}.", "tokens": []}, {"raw": f"Another of {cocoid}."}],
        "cocoid": cocoid,
    }


@pytest.fixture()
def karpathy(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "coco"
    records = [
        _karpathy_record(1, "train", "train2014"),
        _karpathy_record(2, "restval"),
        _karpathy_record(3, "val"),
        _karpathy_record(4, "test"),
        _karpathy_record(5, "test"),
    ]
    for rec in records[:4]:
        _write_image(images / rec["filepath"] / rec["filename"])
    _write_image(images / records[4]["filename"], mode="L", color=90)  # flat layout, greyscale JPEG
    return _write_json(tmp_path / "dataset_coco.json", {"images": records, "dataset": "coco"}), images


@pytest.fixture()
def vqa(tmp_path: Path) -> tuple[Path, Path, Path]:
    images = tmp_path / "val2014"
    _write_image(images / "COCO_val2014_000000000007.jpg")
    _write_image(images / "renamed_000000000042.png", color=(0, 0, 255))  # only found by the folder scan
    questions = [
        {"image_id": 7, "question": "What color is it?", "question_id": 70},
        {"image_id": 7, "question": "Is it red?", "question_id": 71},
        {"image_id": 42, "question": "How many?", "question_id": 420},
    ]
    q = _write_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": questions})

    def ann(qid: int, image_id: int, mc: str, atype: str) -> dict[str, Any]:
        answers = [{"answer": mc, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
        return {
            "question_id": qid,
            "image_id": image_id,
            "answers": answers,
            "multiple_choice_answer": mc,
            "question_type": "what",
            "answer_type": atype,
        }

    annotations = [ann(70, 7, "red", "other"), ann(71, 7, "yes", "yes/no"), ann(420, 42, "2", "number")]
    return q, _write_json(tmp_path / "a.json", {"annotations": annotations}), images


def test_karpathy_rows_features_and_split_mapping(karpathy: tuple[Path, Path]) -> None:
    ann, images = karpathy
    train = load_coco_karpathy(ann, images, "train")
    assert train.features == schema.features()
    assert sorted(train["image_id"]) == ["1", "2"]  # train + restval
    assert load_coco_karpathy(ann, images, "val")["image_id"] == ["3"]
    test = load_coco_karpathy(str(ann), str(images), "test")
    assert len(test) == 2 and set(test["split"]) == {"test"}
    row = test[0]
    assert row["question"] == "" and row["answers"] == [] and row["answer"] == ""
    assert row["question_type"] == "caption" and row["difficulty"] == 0 and row["scene"] == ""
    assert row["captions"] == ["Caption one of 4.", "Another of 4."]
    assert row["image"].mode == "RGB" and row["image"].size == (8, 6)
    assert test[1]["image"].mode == "RGB"  # greyscale file converted
    assert len(set(test["question_id"])) == 2


def test_karpathy_rejects_karpathy_split_name(karpathy: tuple[Path, Path]) -> None:
    with pytest.raises(FreeBenchError, match="restval"):
        load_coco_karpathy(*karpathy, "restval")


def test_vqa_labelled(vqa: tuple[Path, Path, Path]) -> None:
    q, a, images = vqa
    ds = load_vqav2(q, a, images, "val")
    assert ds.features == schema.features()
    assert ds["question_id"] == ["70", "71", "420"]
    assert ds["image_id"] == ["7", "7", "42"]
    assert ds["answer"] == ["red", "yes", "2"]
    assert ds["question_type"] == ["other", "yes/no", "number"]
    assert ds[0]["answers"] == ["red"] * 10 and ds[0]["captions"] == []
    assert ds[2]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert set(ds["split"]) == {"val"}


def test_vqa_unlabelled_and_name_format(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    q, _, images = vqa
    ds = load_vqav2(q, None, images, "unlabeled")
    assert ds.features == schema.features()
    assert ds["answers"] == [[], [], []] and set(ds["answer"]) == {""} and set(ds["question_type"]) == {""}
    flat = tmp_path / "flat"
    _write_image(flat / "7.png")
    _write_image(flat / "42.png")
    ds = load_vqav2(q, None, flat, "test", image_name_format="{image_id}.png")
    assert len(ds) == 3


def test_vqa_subset_inferred_from_folder(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, a, images = vqa
    q = _write_json(
        tmp_path / "q2.json", {"questions": [{"image_id": 7, "question": "?", "question_id": 70}]}
    )
    assert len(load_vqav2(q, None, images, "val")) == 1


@pytest.mark.parametrize("which", ["questions", "annotations"])
def test_missing_file(vqa: tuple[Path, Path, Path], tmp_path: Path, which: str) -> None:
    q, a, images = vqa
    missing = tmp_path / "nope.json"
    args = (missing, a) if which == "questions" else (q, missing)
    with pytest.raises(FreeBenchError, match="nope.json"):
        load_vqav2(*args, images, "val")


def test_missing_annotation_file_and_image_dir(karpathy: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(FreeBenchError, match="missing.json"):
        load_coco_karpathy(tmp_path / "missing.json", karpathy[1], "val")
    with pytest.raises(FreeBenchError, match="no_images"):
        load_coco_karpathy(karpathy[0], tmp_path / "no_images", "val")


def test_malformed_json(karpathy: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [\n  {"split": "val",,}\n]}')
    with pytest.raises(FreeBenchError, match=r"broken\.json.*line 2 column"):
        load_coco_karpathy(bad, karpathy[1], "val")


def test_missing_field_named_with_index(karpathy: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = karpathy
    doc = json.loads(ann.read_text())
    del doc["images"][2]["filename"]
    bad = _write_json(tmp_path / "nofilename.json", doc)
    with pytest.raises(FreeBenchError, match=r"nofilename\.json: record 2 .*'filename'"):
        load_coco_karpathy(bad, images, "val")
    with pytest.raises(FreeBenchError, match=r"empty\.json: top level .*'images'"):
        load_coco_karpathy(_write_json(tmp_path / "empty.json", {}), images, "val")


def test_vqa_missing_fields(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    q, a, images = vqa
    doc = json.loads(a.read_text())
    del doc["annotations"][1]["multiple_choice_answer"]
    bad_a = _write_json(tmp_path / "bad_a.json", doc)
    with pytest.raises(FreeBenchError, match=r"bad_a\.json: record 1 .*'multiple_choice_answer'"):
        load_vqav2(q, bad_a, images, "val")
    doc = json.loads(q.read_text())
    del doc["questions"][2]["image_id"]
    bad_q = _write_json(tmp_path / "bad_q.json", doc)
    with pytest.raises(FreeBenchError, match=r"bad_q\.json: record 2 .*'image_id'"):
        load_vqav2(bad_q, None, images, "val")


def test_missing_image(karpathy: tuple[Path, Path], vqa: tuple[Path, Path, Path]) -> None:
    ann, images = karpathy
    (images / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(FreeBenchError, match="COCO_val2014_000000000003.jpg"):
        load_coco_karpathy(ann, images, "val")
    q, a, vqa_images = vqa
    (vqa_images / "renamed_000000000042.png").unlink()
    with pytest.raises(FreeBenchError, match="COCO_val2014_000000000042.jpg"):
        load_vqav2(q, a, vqa_images, "val")


def test_undecodable_image(karpathy: tuple[Path, Path], vqa: tuple[Path, Path, Path]) -> None:
    ann, images = karpathy
    corrupt = images / "val2014" / "COCO_val2014_000000000003.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(FreeBenchError, match="cannot decode image .*COCO_val2014_000000000003.jpg"):
        load_coco_karpathy(ann, images, "val")
    q, a, vqa_images = vqa
    truncated = vqa_images / "COCO_val2014_000000000007.jpg"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(FreeBenchError, match="COCO_val2014_000000000007.jpg"):
        load_vqav2(q, a, vqa_images, "val")


def test_empty_split(karpathy: tuple[Path, Path], vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ann, images = karpathy
    doc = json.loads(ann.read_text())
    doc["images"] = [r for r in doc["images"] if r["split"] != "val"]
    no_val = _write_json(tmp_path / "no_val.json", doc)
    with pytest.raises(FreeBenchError, match=r"'val'.*no_val\.json"):
        load_coco_karpathy(no_val, images, "val")
    empty_q = _write_json(tmp_path / "empty_q.json", {"questions": []})
    with pytest.raises(FreeBenchError, match=r"'test'.*empty_q\.json"):
        load_vqav2(empty_q, None, vqa[2], "test")


def test_question_without_annotation(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    q, a, images = vqa
    doc = json.loads(a.read_text())
    doc["annotations"] = doc["annotations"][:2]
    short = _write_json(tmp_path / "short.json", doc)
    with pytest.raises(FreeBenchError, match=r"question_id 420 .*short\.json"):
        load_vqav2(q, short, images, "val")
