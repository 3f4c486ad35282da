"""Real-data loaders: COCO Karpathy captions and VQAv2, from files the user already has.

Nothing is downloaded. Both loaders return a `datasets.Dataset` with exactly `schema.features()`,
so the engine treats real data and generated scenes the same way. Every image is decoded once at
load time, so a missing or corrupt file fails here with its path named, not halfway through a run.

Split mapping (Karpathy names -> ours): ``train`` and ``restval`` -> ``train``, ``val`` -> ``val``,
``test`` -> ``test``. VQAv2 files carry no split of their own; rows get the split the caller names.
VQAv2 ``question_type`` is the annotation's ``answer_type`` (``yes/no``, ``number``, ``other``),
the coarse family our per-type breakdowns need; it is ``""`` when no annotations are given.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.data import schema

#: our split -> the Karpathy split names whose images it takes.
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "val": ("val",),
    "test": ("test",),
}

DEFAULT_VQA_IMAGE_NAME = "COCO_{subset}_{image_id:012d}.jpg"


def load_coco_karpathy(annotation_json: str | Path, image_dir: str | Path, split: str) -> datasets.Dataset:
    """One caption row per image of `split` (ours: train/val/test) from Karpathy's dataset_coco.json."""
    check_choice("COCO Karpathy split", split, tuple(KARPATHY_SPLITS))
    path = Path(annotation_json)
    records = _require_list(_read_json(path), "images", path)
    image_root = _existing_dir(image_dir)
    wanted = KARPATHY_SPLITS[split]
    rows: list[dict[str, Any]] = []
    for index, rec in enumerate(records):
        if _require(rec, "split", path, index) not in wanted:
            continue
        filename = str(_require(rec, "filename", path, index))
        if "cocoid" in rec:
            image_id = str(rec["cocoid"])
        else:
            image_id = str(_require(rec, "imgid", path, index))
        sentences = _require(rec, "sentences", path, index)
        captions = [str(_require(s, "raw", path, index, parent="sentences[]")) for s in sentences]
        nested = image_root / str(rec.get("filepath", "")) / filename
        image_path = nested if nested.is_file() else image_root / filename
        if not image_path.is_file():
            raise FreeBenchError(
                f"{path} record {index}: image not found at {nested}"
                + (f" nor {image_path}" if image_path != nested else "")
            )
        rows.append(
            _row(
                image=_image_value(image_path),
                image_id=image_id,
                question_id=f"{image_id}-caption",
                question_type="caption",
                captions=captions,
                split=split,
            )
        )
    if not rows:
        raise FreeBenchError(
            f"split {split!r} is empty in {path}: no image has Karpathy split in {list(wanted)}"
        )
    return _to_dataset(rows)


def load_vqav2(
    questions_json: str | Path,
    annotations_json: str | Path | None,
    image_dir: str | Path,
    split: str,
    *,
    image_name_format: str = DEFAULT_VQA_IMAGE_NAME,
) -> datasets.Dataset:
    """One row per VQAv2 question; `annotations_json=None` gives unlabelled rows (answers == []).

    Images are found as ``image_dir / image_name_format.format(subset=..., image_id=...)``, where
    ``subset`` is the questions file's ``data_subtype`` (e.g. ``val2014``) or, if absent, the image
    folder's name; failing that, any file in the folder whose stem ends with the 12-digit image id.
    """
    check_choice("split", split, schema.SPLITS)
    q_path = Path(questions_json)
    q_doc = _read_json(q_path)
    questions = _require_list(q_doc, "questions", q_path)
    image_root = _existing_dir(image_dir)
    subset = str(q_doc.get("data_subtype") or image_root.name)
    answers_by_qid = _read_vqa_annotations(Path(annotations_json)) if annotations_json is not None else None
    finder = _ImageFinder(image_root, image_name_format, subset)
    rows: list[dict[str, Any]] = []
    for index, q in enumerate(questions):
        qid = _require(q, "question_id", q_path, index)
        image_id = _require(q, "image_id", q_path, index)
        text = str(_require(q, "question", q_path, index))
        answers: list[str] = []
        answer = qtype = ""
        if answers_by_qid is not None:
            if qid not in answers_by_qid:
                raise FreeBenchError(
                    f"{q_path} record {index}: question_id {qid} has no entry in {annotations_json}"
                )
            answers, answer, qtype = answers_by_qid[qid]
        rows.append(
            _row(
                image=finder.image(image_id, f"{q_path} record {index}"),
                image_id=str(image_id),
                question_id=str(qid),
                question=text,
                answers=answers,
                answer=answer,
                question_type=qtype,
                split=split,
            )
        )
    if not rows:
        raise FreeBenchError(f"split {split!r} is empty: {q_path} has no questions")
    return _to_dataset(rows)


def _read_vqa_annotations(path: Path) -> dict[Any, tuple[list[str], str, str]]:
    """question_id -> (answers, multiple_choice_answer, answer_type)."""
    records = _require_list(_read_json(path), "annotations", path)
    out: dict[Any, tuple[list[str], str, str]] = {}
    for index, ann in enumerate(records):
        answers = [
            str(_require(a, "answer", path, index, parent="answers[]"))
            for a in _require(ann, "answers", path, index)
        ]
        out[_require(ann, "question_id", path, index)] = (
            answers,
            str(_require(ann, "multiple_choice_answer", path, index)),
            str(_require(ann, "answer_type", path, index)),
        )
    return out


class _ImageFinder:
    """Resolves and decodes each VQAv2 image once (many questions share an image)."""

    def __init__(self, root: Path, name_format: str, subset: str) -> None:
        self.root, self.name_format, self.subset = root, name_format, subset
        self._by_suffix: dict[str, Path] | None = None
        self._cache: dict[Any, dict[str, Any]] = {}

    def image(self, image_id: Any, where: str) -> dict[str, Any]:
        if image_id not in self._cache:
            self._cache[image_id] = _image_value(self._locate(image_id, where))
        return self._cache[image_id]

    def _locate(self, image_id: Any, where: str) -> Path:
        try:
            expected = self.root / self.name_format.format(subset=self.subset, image_id=int(image_id))
        except (KeyError, IndexError, ValueError) as exc:
            raise FreeBenchError(
                f"{where}: cannot build an image name from image_name_format {self.name_format!r} "
                f"and image_id {image_id!r} ({exc!r}); use the fields {{subset}} and {{image_id}}"
            ) from exc
        if expected.is_file():
            return expected
        if self._by_suffix is None:
            self._by_suffix = _index_by_id(self.root.iterdir())
        found = self._by_suffix.get(f"{int(image_id):012d}")
        if found is None:
            raise FreeBenchError(
                f"{where}: image {image_id} not found at {expected}, and no file in {self.root} "
                f"has a name ending in {int(image_id):012d}"
            )
        return found


def _index_by_id(paths: Iterable[Path]) -> dict[str, Path]:
    """Map the trailing 12-digit id of each file stem to the file (the folder-scan fallback)."""
    out: dict[str, Path] = {}
    for p in sorted(paths):
        m = re.search(r"(\d{12})$", p.stem)
        if m and p.is_file():
            out.setdefault(m.group(1), p)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object, naming the file (and line/column) on any failure."""
    if not path.is_file():
        raise FreeBenchError(f"file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise FreeBenchError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise FreeBenchError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(doc, dict):
        raise FreeBenchError(f"{path}: expected a JSON object at top level, got {type(doc).__name__}")
    return doc


def _require(record: Any, field: str, path: Path, index: int | None, parent: str = "") -> Any:
    """`record[field]`, or an error naming the file, the field and the record index."""
    if isinstance(record, dict) and field in record:
        return record[field]
    name = f"{parent}.{field}" if parent else field
    where = f"record {index}" if index is not None else "top level"
    raise FreeBenchError(f"{path}: {where} is missing required field {name!r}")


def _require_list(doc: dict[str, Any], field: str, path: Path) -> list[Any]:
    """The top-level list `doc[field]`, or an error naming the file and the field."""
    value = _require(doc, field, path, None)
    if not isinstance(value, list):
        raise FreeBenchError(f"{path}: field {field!r} must be a list, got {type(value).__name__}")
    return value


def _existing_dir(image_dir: str | Path) -> Path:
    root = Path(image_dir)
    if not root.is_dir():
        raise FreeBenchError(f"image directory not found: {root}")
    return root


def _image_value(path: Path) -> dict[str, Any]:
    """Decode `path` fully now; keep RGB files by path, re-encode others (grey, CMYK) as RGB PNG."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "RGB":
                return {"path": str(path), "bytes": None}
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
    except FileNotFoundError as exc:
        raise FreeBenchError(f"image not found: {path}") from exc
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, ... for bad files
        raise FreeBenchError(f"cannot decode image {path}: {exc}") from exc
    return {"path": None, "bytes": buf.getvalue()}


def _row(**fields: Any) -> dict[str, Any]:
    """A schema row with every field the source lacks left empty."""
    row: dict[str, Any] = {
        "question": "",
        "answers": [],
        "answer": "",
        "question_type": "",
        "difficulty": 0,
        "captions": [],
        "scene": "",
    }
    row.update(fields)
    return row


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    features = schema.features()
    columns = {name: [r[name] for r in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)
