"""Real-data loaders on tiny fixture files in the real COCO Karpathy and VQAv2 formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from free_bench.config import SPLITS
from free_bench.core.errors import FreeBenchError
from free_bench.data import folder, schema, splitting
from free_bench.data.folder import build_dataset, dataset_config, write_dataset
from free_bench.data.loaders import load_coco_karpathy, load_vqav2
from free_bench.data.scenes_dataset import dataset_hash


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


# --- bad records: a clear error naming the file, the record index and the field -------------------
def _edit(src: Path, dst: Path, field: str, index: int, key: str, value: Any) -> Path:
    doc = json.loads(src.read_text())
    doc[field][index][key] = value
    return _write_json(dst, doc)


@pytest.mark.parametrize(
    "key, value, shown",
    [("image_id", None, "null"), ("question_id", [1], r"\[1\]"), ("image_id", True, "true"),
     ("question_id", 1.5, "1.5"), ("question", None, "null")],
)  # fmt: skip
def test_vqa_bad_question_field(
    vqa: tuple[Path, Path, Path], tmp_path: Path, key: str, value: Any, shown: str
) -> None:
    q, a, images = vqa
    bad = _edit(q, tmp_path / "bad_q.json", "questions", 1, key, value)
    with pytest.raises(FreeBenchError, match=rf"bad_q\.json: record 1 field '{key}' must be .*, got {shown}"):
        load_vqav2(bad, a, images, "val")


def test_vqa_null_answers(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    q, a, images = vqa
    doc = json.loads(a.read_text())
    doc["annotations"][2]["answers"][3]["answer"] = None
    bad = _write_json(tmp_path / "bad_a.json", doc)
    with pytest.raises(
        FreeBenchError, match=r"bad_a\.json: record 2 field 'answers\[3\]\.answer' must be a string, got null"
    ):
        load_vqav2(q, bad, images, "val")
    bad = _edit(a, tmp_path / "bad_mc.json", "annotations", 0, "multiple_choice_answer", None)
    with pytest.raises(FreeBenchError, match=r"bad_mc\.json: record 0 field 'multiple_choice_answer' .*null"):
        load_vqav2(q, bad, images, "val")
    bad = _edit(a, tmp_path / "bad_list.json", "annotations", 1, "answers", None)
    with pytest.raises(FreeBenchError, match=r"bad_list\.json: record 1 field 'answers' must be a list"):
        load_vqav2(q, bad, images, "val")


def test_karpathy_null_caption_and_id(karpathy: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = karpathy
    doc = json.loads(ann.read_text())
    doc["images"][3]["sentences"][1]["raw"] = None
    bad = _write_json(tmp_path / "bad_k.json", doc)
    with pytest.raises(
        FreeBenchError, match=r"bad_k\.json: record 3 field 'sentences\[1\]\.raw' must be a string, got null"
    ):
        load_coco_karpathy(bad, images, "test")
    bad = _edit(ann, tmp_path / "bad_id.json", "images", 2, "cocoid", None)
    with pytest.raises(FreeBenchError, match=r"bad_id\.json: record 2 field 'cocoid' must be an int"):
        load_coco_karpathy(bad, images, "val")


def test_duplicates_error_unless_keep_first(vqa: tuple[Path, Path, Path], tmp_path: Path, caplog) -> None:
    q, a, images = vqa
    doc = json.loads(q.read_text())
    doc["questions"].append({"image_id": 7, "question": "A repeat?", "question_id": 70})
    dup_q = _write_json(tmp_path / "dup_q.json", doc)
    with pytest.raises(FreeBenchError, match=r"dup_q\.json: record 3 repeats question_id 70.*--keep-first"):
        load_vqav2(dup_q, a, images, "val")
    with caplog.at_level("WARNING"):
        ds = load_vqav2(dup_q, a, images, "val", keep_first=True)
    assert ds["question_id"] == ["70", "71", "420"] and ds["question"][0] == "What color is it?"
    assert "dropped 1 duplicate question_ids" in caplog.text
    doc = json.loads(a.read_text())
    doc["annotations"].append({**doc["annotations"][0], "multiple_choice_answer": "blue"})
    dup_a = _write_json(tmp_path / "dup_a.json", doc)
    with pytest.raises(
        FreeBenchError, match=r"dup_a\.json: record 3 is a second annotation of question_id 70"
    ):
        load_vqav2(q, dup_a, images, "val")
    assert load_vqav2(q, dup_a, images, "val", keep_first=True)["answer"][0] == "red"


def test_karpathy_duplicate_image(karpathy: tuple[Path, Path], tmp_path: Path) -> None:
    ann, images = karpathy
    doc = json.loads(ann.read_text())
    doc["images"].append(doc["images"][3])
    dup = _write_json(tmp_path / "dup_k.json", doc)
    with pytest.raises(FreeBenchError, match=r"dup_k\.json: record 5 repeats cocoid 4"):
        load_coco_karpathy(dup, images, "test")
    assert len(load_coco_karpathy(dup, images, "test", keep_first=True)) == 2


def test_missing_paths_named(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    q, a, images = vqa
    with pytest.raises(FreeBenchError, match=r"VQAv2 annotations file not found: .*gone\.json"):
        load_vqav2(q, tmp_path / "gone.json", images, "val")
    with pytest.raises(FreeBenchError, match=r"image folder \(--images\) not found: .*val2015"):
        load_vqav2(q, a, tmp_path / "val2015", "val")


def test_unlabeled_split_drops_answers(vqa: tuple[Path, Path, Path], karpathy: tuple[Path, Path]) -> None:
    ds = load_vqav2(*vqa, "unlabeled")
    assert ds["answers"] == [[], [], []] and set(ds["answer"]) == {""} and len(ds) == 3


# --- dividing one file set among several splits ----------------------------------------------------
def test_divide_ids_exact_disjoint_and_stable() -> None:
    ids = [str(i) for i in range(101)]
    of = splitting.divide_ids(ids, ["train", "val", "test"], [0.5, 0.3, 0.2], "x")
    counts = {s: sum(1 for v in of.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 51, "val": 30, "test": 20}  # round(50.5) = 51, round(80.8) = 81
    assert set(of) == set(ids)
    assert (
        splitting.divide_ids(list(reversed(ids)) + ids, ["train", "val", "test"], [0.5, 0.3, 0.2], "x") == of
    )
    halves = splitting.divide_ids(ids, ["val", "test"], splitting.check_fractions(["val", "test"], None), "x")
    assert sum(1 for v in halves.values() if v == "val") == 51  # equal shares: 50.5 rounds up


def test_fraction_errors() -> None:
    with pytest.raises(FreeBenchError, match="2 values for 3 --splits"):
        splitting.check_fractions(["train", "val", "test"], [0.5, 0.5])
    with pytest.raises(FreeBenchError, match=r"only \['val'\] is listed"):
        splitting.check_fractions(["val"], [1.0])
    with pytest.raises(FreeBenchError, match="share of split 'test' is 0.0"):
        splitting.check_fractions(["val", "test"], [1.0, 0.0])
    with pytest.raises(FreeBenchError, match="sum to 0.9"):
        splitting.check_fractions(["val", "test"], [0.5, 0.4])
    assert splitting.check_fractions(["val", "test"], [0.7, 0.3 + 5e-7]) == [0.7, 0.3 + 5e-7]
    with pytest.raises(FreeBenchError, match=r"split 'test' gets no images: q\.json has 3 .*fewer --splits"):
        splitting.divide_ids(["1", "2", "3"], ["val", "test"], [0.9, 0.1], "q.json")
    with pytest.raises(FreeBenchError, match="'val' twice"):
        splitting.check_splits(["val", "test", "val"])


def _vqa_many(tmp_path: Path, n_images: int = 12) -> tuple[Path, Path, Path]:
    images = tmp_path / "val2014"
    questions, annotations = [], []
    for i in range(1, n_images + 1):
        _write_image(images / f"COCO_val2014_{i:012d}.jpg", color=(i, 0, 0))
        for j in range(2):
            qid = 10 * i + j
            questions.append({"image_id": i, "question": f"q{qid}?", "question_id": qid})
            answers = [
                {"answer": f"a{qid}", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)
            ]
            annotations.append({"question_id": qid, "image_id": i, "answers": answers,
                                "multiple_choice_answer": f"a{qid}", "answer_type": "other"})  # fmt: skip
    q = _write_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": questions})
    return q, _write_json(tmp_path / "a.json", {"annotations": annotations}), images


def test_vqa_divided_among_splits(tmp_path: Path) -> None:
    q, a, images = _vqa_many(tmp_path)
    splits = ["exit_train", "unlabeled", "test"]
    config = dataset_config("vqav2", questions=q, annotations=a, images=images, splits=splits,
                            fractions=[0.5, 0.25, 0.25])  # fmt: skip
    assert config["fractions"] == [0.5, 0.25, 0.25] and config["split_rule"] == splitting.RULE
    ds = build_dataset(config)
    assert list(ds) == splits and [len(ds[s]) for s in splits] == [12, 6, 6]  # 6, 3, 3 images
    qids = [x for s in splits for x in ds[s]["question_id"]]
    assert sorted(qids, key=int) == [str(10 * i + j) for i in range(1, 13) for j in range(2)]
    by_split = [set(ds[s]["image_id"]) for s in splits]
    assert not (by_split[0] & by_split[1] or by_split[0] & by_split[2] or by_split[1] & by_split[2])
    assert set(ds["unlabeled"]["answer"]) == {""} and ds["unlabeled"]["answers"] == [[]] * 6
    assert ds["test"]["answer"] == [f"a{qid}" for qid in ds["test"]["question_id"]]
    assert [int(x) for x in ds["test"]["question_id"]] == sorted(int(x) for x in ds["test"]["question_id"])
    assert set(ds["test"]["split"]) == {"test"}
    assert build_dataset(config)["test"]["question_id"] == ds["test"]["question_id"]


def test_karpathy_source_split(karpathy: tuple[Path, Path]) -> None:
    ann, images = karpathy
    config = dataset_config("coco-karpathy", annotations=ann, images=images, splits=["exit_train", "test"],
                            source_split="test")  # fmt: skip
    ds = build_dataset(config)
    assert sorted([*ds["exit_train"]["image_id"], *ds["test"]["image_id"]]) == ["4", "5"]
    plain = build_dataset(dataset_config("coco-karpathy", annotations=ann, images=images, splits=["train"]))
    assert sorted(plain["train"]["image_id"]) == ["1", "2"]
    with pytest.raises(FreeBenchError, match=r"'exit_train'.*--source-split"):
        dataset_config("coco-karpathy", annotations=ann, images=images, splits=["exit_train"])
    with pytest.raises(FreeBenchError, match="--fractions divides a Karpathy split"):
        dataset_config("coco-karpathy", images=images, splits=["val", "test"], fractions=[0.5, 0.5])
    with pytest.raises(FreeBenchError, match="--source-split .* coco-karpathy only"):
        dataset_config("vqav2", images=images, source_split="test")


def test_scenes_splits_config() -> None:
    assert dataset_config("scenes") == {"dataset": "scenes", "profile": "smoke", "seed": 0}
    assert dataset_config("scenes", splits=list(reversed(SPLITS))) == dataset_config("scenes")
    assert dataset_config("scenes", splits=["test", "val"])["splits"] == ["val", "test"]
    with pytest.raises(FreeBenchError, match="--fractions and --keep-first apply to real files"):
        dataset_config("scenes", fractions=[0.5, 0.5])


# --- hashing and writing -----------------------------------------------------------------------------
def test_hash_of_path_images_follows_the_file(tmp_path: Path) -> None:
    q, a, images = _vqa_many(tmp_path, 3)
    config = dataset_config("vqav2", questions=q, annotations=a, images=images, splits=["val"])
    ds = write_dataset(tmp_path / "D", config)
    assert ds is not None and ds["val"].with_format("arrow")[:].column("image")[0]["bytes"].as_py() is None
    recorded = json.loads((tmp_path / "D" / "manifest.json").read_text())["dataset_hash"]
    assert recorded == dataset_hash(ds) == dataset_hash(datasets.load_from_disk(str(tmp_path / "D")))
    assert write_dataset(tmp_path / "D", config) is None  # reused
    _write_image(images / "COCO_val2014_000000000002.jpg", color=(0, 99, 0))
    assert dataset_hash(build_dataset(config)) != recorded


def _leftovers(root: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in keep)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q, a, images = _vqa_many(tmp_path, 4)
    inputs = {"q.json", "a.json", "val2014"}
    config = dataset_config("vqav2", questions=q, annotations=a, images=images, splits=["val", "test"])
    (images / "COCO_val2014_000000000003.jpg").write_bytes(b"broken")  # fails mid-way through loading
    with pytest.raises(FreeBenchError, match="COCO_val2014_000000000003.jpg"):
        write_dataset(tmp_path / "new" / "deeper" / "D", config)
    assert _leftovers(tmp_path, inputs) == []
    _write_image(images / "COCO_val2014_000000000003.jpg")

    def half_then_fail(self: datasets.DatasetDict, path: str, **kw: Any) -> None:
        (Path(path) / "val").mkdir()
        (Path(path) / "val" / "part.arrow").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "new" / "D", config)
    assert _leftovers(tmp_path, inputs) == []
    monkeypatch.undo()
    write_dataset(tmp_path / "D", config)
    monkeypatch.setattr(
        folder.Manifest, "write", lambda self, path: (_ for _ in ()).throw(OSError("no space"))
    )
    with pytest.raises(OSError, match="no space"):
        write_dataset(tmp_path / "D", config, overwrite=True)
    assert _leftovers(tmp_path, inputs) == ["D"]  # the old folder is kept whole
    assert datasets.load_from_disk(str(tmp_path / "D"))["val"].num_rows > 0
