"""`free-bench data` end to end on the smoke profile, and its bad-input behaviour."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import datasets
import pytest
from PIL import Image

from free_bench.data.scenes_dataset import dataset_hash

pytestmark = pytest.mark.integration


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "free_bench", *args], capture_output=True, text=True, cwd=cwd
    )


def test_data_smoke_writes_dataset_and_counts(tmp_path):
    out = tmp_path / "scenes"
    res = _cli("data", "--dataset", "scenes", "--profile", "smoke", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "question_type" in res.stdout and "test_novel" in res.stdout and "total" in res.stdout
    ds = datasets.load_from_disk(str(out))
    assert set(ds) == {"train", "exit_train", "unlabeled", "val", "test", "test_novel"}
    assert (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "mnist"], "invalid choice: 'mnist' (choose from 'scenes', 'coco-karpathy', 'vqav2')"),
        (["--profile", "huge"], "invalid choice: 'huge' (choose from 'smoke', 'cpu', 'gpu')"),
        (["--dataset", "vqav2"], "--images"),
    ],
)
def test_bad_input_clear_message_nothing_written(tmp_path, args, needle):
    out = tmp_path / "o"
    res = _cli("data", *args, "--out", str(out))
    assert res.returncode == 2
    assert needle in res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_every_subcommand_has_help_with_example():
    res = _cli("data", "--help")
    assert res.returncode == 0 and "example:" in res.stdout


# --- real files in the official formats ------------------------------------------------------------
def _official(root, n_images: int = 8, edit=None):
    """VQAv2 files as distributed (COCO-named JPEGs, info/license headers); `edit(q_doc, a_doc)` spoils them."""
    images = root / "val2014"
    images.mkdir(parents=True)
    questions, annotations = [], []
    for i in range(1, n_images + 1):
        image_id = 1000 + i
        Image.new("RGB", (8, 6), (20 * i, 0, 0)).save(images / f"COCO_val2014_{image_id:012d}.jpg")
        for j in range(2):
            qid = 10 * image_id + j
            questions.append({"image_id": image_id, "question": f"Question {qid}?", "question_id": qid})
            answers = [{"answer": "yes", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
            annotations.append({"question_type": "is the", "multiple_choice_answer": "yes", "answers": answers,
                                "image_id": image_id, "answer_type": "yes/no", "question_id": qid})  # fmt: skip
    header = {
        "info": {"year": 2017},
        "license": {"name": "CC"},
        "data_type": "mscoco",
        "data_subtype": "val2014",
    }
    q_doc = {**header, "task_type": "Open-Ended", "questions": questions}
    a_doc = {**header, "annotations": annotations}
    if edit is not None:
        edit(q_doc, a_doc, images)
    (root / "q.json").write_text(json.dumps(q_doc))
    (root / "a.json").write_text(json.dumps(a_doc))
    return ["--dataset", "vqav2", "--questions", str(root / "q.json"), "--annotations", str(root / "a.json"),
            "--images", str(images)]  # fmt: skip


def test_vqav2_official_files_divided_by_image(tmp_path):
    files = _official(tmp_path)
    out = tmp_path / "D"
    res = _cli("data", *files, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "a.json", "q.json", "val2014"]  # no D.tmp
    ds = datasets.load_from_disk(str(out))
    assert set(ds) == {"val", "test"} and len(ds["val"]) == len(ds["test"]) == 8  # 4 images each
    assert not set(ds["val"]["image_id"]) & set(ds["test"]["image_id"])
    assert sorted([*ds["val"]["question_id"], *ds["test"]["question_id"]]) == sorted(
        str(10 * (1000 + i) + j) for i in range(1, 9) for j in range(2)
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["splits"] == ["val", "test"] and manifest["config"]["fractions"] == [0.5, 0.5]
    assert manifest["config"]["split_rule"].startswith("sha256-order")
    assert manifest["dataset_hash"] == dataset_hash(ds)
    assert _cli("data", *files, "--out", str(out)).returncode == 0  # same settings: reused
    res = _cli("data", *files, "--splits", "val", "test", "--fractions", "0.75", "0.25", "--out", str(out))
    assert res.returncode == 2 and "fractions: [0.5, 0.5] recorded, [0.75, 0.25] asked" in res.stderr
    res = _cli("data", *files, "--splits", "exit_train", "unlabeled", "val", "test",
               "--fractions", "0.25", "0.25", "0.25", "0.25", "--overwrite", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    ds = datasets.load_from_disk(str(out))
    assert [len(set(ds[s]["image_id"])) for s in ("exit_train", "unlabeled", "val", "test")] == [2, 2, 2, 2]
    assert set(ds["unlabeled"]["answer"]) == {""} and set(ds["test"]["answer"]) == {"yes"}


def test_keep_first_drops_repeats_and_says_so(tmp_path):
    def repeat(q, a, images):
        q["questions"].append({**q["questions"][0], "question": "a repeat"})
        a["annotations"].append({**a["annotations"][1], "multiple_choice_answer": "no"})

    files = _official(tmp_path, edit=repeat)
    res = _cli("data", *files, "--splits", "val", "--keep-first", "--out", str(tmp_path / "D"))
    assert res.returncode == 0, res.stderr
    assert (
        "dropped 1 duplicate question_ids" in res.stderr and "dropped 1 duplicate annotations" in res.stderr
    )
    val = datasets.load_from_disk(str(tmp_path / "D"))["val"]
    assert len(val) == 16 and "a repeat" not in val["question"] and set(val["answer"]) == {"yes"}


def _set(field, index, key, value, sub=None):
    def edit(q, a, images):
        record = (q if field == "questions" else a)[field][index]
        (record[key][sub] if sub is not None else record)[key if sub is None else "answer"] = value

    return edit


def _spoil_image(q, a, images):
    (images / "COCO_val2014_000000001005.jpg").write_bytes(b"not a jpeg")


@pytest.mark.parametrize(
    "edit, extra, needle",
    [
        (_set("questions", 1, "image_id", None), [], r"q\.json: record 1 field 'image_id' must be an int .*got null"),
        (_set("questions", 2, "question_id", [1]), [], r"q\.json: record 2 field 'question_id' .*got \[1\]"),
        (_set("questions", 3, "question", None), [], r"q\.json: record 3 field 'question' must be a string, got null"),
        (_set("annotations", 4, "answers", None, sub=2), [], r"a\.json: record 4 field 'answers\[2\]\.answer' .*null"),
        (_set("annotations", 0, "multiple_choice_answer", None), [], r"a\.json: record 0 field 'multiple_choice_answer'"),
        (lambda q, a, i: q["questions"].append(q["questions"][5]), [], r"q\.json: record 16 repeats question_id 10031;.*--keep-first"),
        (lambda q, a, i: a["annotations"].append(a["annotations"][5]), [], r"a\.json: record 16 is a second annotation of question_id 10031"),
        (lambda q, a, i: a["annotations"].pop(6), [], r"q\.json record 6: question_id 10040 has no entry in .*a\.json"),
        (_spoil_image, [], r"cannot decode image .*COCO_val2014_000000001005\.jpg"),
        (None, ["--annotations", "MISSING/a.json"], r"VQAv2 annotations file not found: MISSING/a\.json"),
        (None, ["--images", "MISSING/val2014"], r"image folder \(--images\) not found: MISSING/val2014"),
        (None, ["--splits", "val", "test", "--fractions", "1"], r"--fractions gives 1 values for 2 --splits"),
        (None, ["--splits", "val", "--fractions", "1"], r"only \['val'\] is listed"),
        (None, ["--splits", "val", "test", "--fractions", "0.5", "0.6"], r"sum to 1\.1"),
        (None, ["--splits", "val", "test", "--fractions", "0.95", "0.05"], r"split 'test' gets no images: .*fewer --splits"),
        (None, ["--splits", "val", "val"], r"'val' twice"),
        (None, ["--source-split", "val"], r"--source-split .*coco-karpathy only"),
        (None, ["--export", "vqav2"], r"--export writes generated scenes"),
    ],
)  # fmt: skip
def test_bad_real_files_clear_error_nothing_written(tmp_path, edit, extra, needle):
    files = _official(tmp_path / "in", edit=edit)
    extra = [x.replace("MISSING", str(tmp_path / "missing")) for x in extra]  # a later flag wins in argparse
    out = tmp_path / "runs" / "o"
    res = _cli("data", *files, *extra, "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert re.search(needle.replace("MISSING", re.escape(str(tmp_path / "missing"))), res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # not even the parent of --out


def test_scenes_writes_only_the_splits_asked(tmp_path):
    out = tmp_path / "s"
    res = _cli("data", "--dataset", "scenes", "--splits", "test", "val", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert set(datasets.load_from_disk(str(out))) == {"val", "test"}
    assert json.loads((out / "manifest.json").read_text())["config"]["splits"] == ["val", "test"]


def test_karpathy_source_split_divided(tmp_path):
    images = tmp_path / "coco" / "val2014"
    images.mkdir(parents=True)
    records = []
    for i in range(1, 7):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (8, 6), (i, i, i)).save(images / name)
        records.append({"filepath": "val2014", "filename": name, "imgid": i, "cocoid": i, "split": "val",
                        "sentences": [{"raw": f"Caption {i}.", "tokens": ["caption"]}]})  # fmt: skip
    (tmp_path / "k.json").write_text(json.dumps({"images": records, "dataset": "coco"}))
    files = [
        "--dataset",
        "coco-karpathy",
        "--annotations",
        str(tmp_path / "k.json"),
        "--images",
        str(tmp_path / "coco"),
    ]
    res = _cli("data", *files, "--source-split", "val", "--splits", "exit_train", "val", "test",
               "--fractions", "0.5", "0.25", "0.25", "--out", str(tmp_path / "D"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    ds = datasets.load_from_disk(str(tmp_path / "D"))
    assert [len(ds[s]) for s in ("exit_train", "val", "test")] == [3, 2, 1]  # round(3), round(4.5) = 5
    assert sorted(int(i) for s in ds for i in ds[s]["image_id"]) == [1, 2, 3, 4, 5, 6]
    res = _cli("data", *files, "--splits", "exit_train", "--out", str(tmp_path / "E"))
    assert res.returncode == 2 and "--source-split" in res.stderr and not (tmp_path / "E").exists()
