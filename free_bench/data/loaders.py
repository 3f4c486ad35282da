"""Real-data loaders: COCO Karpathy captions and VQAv2, from files the user already has.

Nothing is downloaded. Both loaders return a `datasets.Dataset` with exactly `schema.features()`,
so the engine treats real data and generated scenes the same way. Every image is decoded once at
load time, so a missing or corrupt file fails here with its path named, not halfway through a run.
Every record is checked as it is read: ids must be ints or strings, texts strings (never null), and
a repeated question id (or annotation, or Karpathy image) is an error unless `keep_first=True`, which
keeps the first and logs how many were dropped; an error names the file, the record index and field.

Split mapping (Karpathy names -> ours): ``train`` and ``restval`` -> ``train``, ``val`` -> ``val``,
``test`` -> ``test``. VQAv2 files carry no split of their own; rows get the split the caller names
(`free-bench data` divides one file set among several splits: see `free_bench.data.splitting`).
The ``unlabeled`` split never carries answers or captions. VQAv2 ``question_type`` is the
annotation's ``answer_type`` (``yes/no``, ``number``, ``other``), the coarse family our per-type
breakdowns need; it is ``""`` when no annotations are given.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.data import schema, splitting

log = logging.getLogger(__name__)

#: our split -> the Karpathy split names whose images it takes.
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "val": ("val",),
    "test": ("test",),
}
#: the split names found in Karpathy's dataset_coco.json.
KARPATHY_NAMES: tuple[str, ...] = ("train", "restval", "val", "test")

DEFAULT_VQA_IMAGE_NAME = "COCO_{subset}_{image_id:012d}.jpg"


def load_coco_karpathy(annotation_json: str | Path, image_dir: str | Path, split: str, *,
                       keep_first: bool = False) -> datasets.Dataset:  # fmt: skip
    """One caption row per image of `split` (ours: train/val/test) from Karpathy's dataset_coco.json."""
    check_choice("COCO Karpathy split", split, tuple(KARPATHY_SPLITS))
    rows = karpathy_rows(annotation_json, image_dir, KARPATHY_SPLITS[split], keep_first=keep_first)
    return to_dataset(splitting.label(rows, split))


def karpathy_rows(annotation_json: str | Path, image_dir: str | Path, karpathy_splits: Sequence[str], *,
                  keep_first: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """The caption rows (split unset) of the images whose Karpathy split is in `karpathy_splits`."""
    for name in karpathy_splits:
        check_choice("Karpathy split", name, KARPATHY_NAMES)
    path = Path(annotation_json)
    records = _require(
        _read_json(path, "Karpathy annotations file (dataset_coco.json)"), "images", path, None, kind="list"
    )
    image_root = _existing_dir(image_dir)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped = 0
    for index, rec in enumerate(records):
        if _require(rec, "split", path, index) not in karpathy_splits:
            continue
        filename = _require_str(rec, "filename", path, index)
        id_field = "cocoid" if "cocoid" in rec else "imgid"
        image_id = _require_id(rec, id_field, path, index)
        if image_id in seen:
            dropped += _duplicate(keep_first, f"{path}: record {index} repeats {id_field} {image_id}")
            continue
        seen.add(image_id)
        sentences = _require(rec, "sentences", path, index, kind="list")
        captions = [
            _require_str(s, "raw", path, index, parent=f"sentences[{j}]") for j, s in enumerate(sentences)
        ]
        nested = image_root / str(rec.get("filepath") or "") / filename
        image_path = nested if nested.is_file() else image_root / filename
        if not image_path.is_file():
            raise FreeBenchError(
                f"{path} record {index}: image not found at {nested}"
                + (f" nor {image_path}" if image_path != nested else "")
            )
        rows.append(_row(image=_image_value(image_path), image_id=image_id, question_id=f"{image_id}-caption",
                         question_type="caption", captions=captions))  # fmt: skip
    _log_dropped(dropped, path, "image ids")
    if not rows:
        names = " + ".join(repr(n) for n in karpathy_splits)
        raise FreeBenchError(f"Karpathy split {names} has no images in {path}: no record has that split")
    return rows


def load_vqav2(
    questions_json: str | Path,
    annotations_json: str | Path | None,
    image_dir: str | Path,
    split: str,
    *,
    image_name_format: str = DEFAULT_VQA_IMAGE_NAME,
    keep_first: bool = False,
) -> datasets.Dataset:
    """One row per VQAv2 question; `annotations_json=None` gives unlabelled rows (answers == []).

    Images are found as ``image_dir / image_name_format.format(subset=..., image_id=...)``, where
    ``subset`` is the questions file's ``data_subtype`` (e.g. ``val2014``) or, if absent, the image
    folder's name; failing that, any file in the folder whose stem ends with the 12-digit image id.
    """
    check_choice("split", split, schema.SPLITS)
    rows = vqav2_rows(questions_json, annotations_json, image_dir,
                      image_name_format=image_name_format, keep_first=keep_first)  # fmt: skip
    if not rows:
        raise FreeBenchError(f"split {split!r} is empty: {questions_json} has no questions")
    return to_dataset(splitting.label(rows, split))


def vqav2_rows(questions_json: str | Path, annotations_json: str | Path | None, image_dir: str | Path, *,
               image_name_format: str = DEFAULT_VQA_IMAGE_NAME,
               keep_first: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """The rows (split unset) of every question, in file order; [] when the file has none."""
    q_path = Path(questions_json)
    q_doc = _read_json(q_path, "VQAv2 questions file")
    questions = _require(q_doc, "questions", q_path, None, kind="list")
    image_root = _existing_dir(image_dir)
    subset = str(q_doc.get("data_subtype") or image_root.name)
    answers_by_qid = (
        None if annotations_json is None else _read_vqa_annotations(Path(annotations_json), keep_first)
    )
    finder = _ImageFinder(image_root, image_name_format, subset)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped = 0
    for index, q in enumerate(questions):
        qid = _require_id(q, "question_id", q_path, index)
        image_id = _require_id(q, "image_id", q_path, index)
        text = _require_str(q, "question", q_path, index)
        if qid in seen:
            dropped += _duplicate(keep_first, f"{q_path}: record {index} repeats question_id {qid}")
            continue
        seen.add(qid)
        answers: list[str] = []
        answer = qtype = ""
        if answers_by_qid is not None:
            if qid not in answers_by_qid:
                raise FreeBenchError(
                    f"{q_path} record {index}: question_id {qid} has no entry in {annotations_json}"
                )
            answers, answer, qtype = answers_by_qid[qid]
        rows.append(_row(image=finder.image(image_id, f"{q_path} record {index}"), image_id=image_id,
                         question_id=qid, question=text, answers=answers, answer=answer, question_type=qtype))  # fmt: skip
    _log_dropped(dropped, q_path, "question_ids")
    return rows


def _read_vqa_annotations(path: Path, keep_first: bool) -> dict[str, tuple[list[str], str, str]]:
    """question_id -> (answers, multiple_choice_answer, answer_type)."""
    records = _require(_read_json(path, "VQAv2 annotations file"), "annotations", path, None, kind="list")
    out: dict[str, tuple[list[str], str, str]] = {}
    dropped = 0
    for index, ann in enumerate(records):
        qid = _require_id(ann, "question_id", path, index)
        answers = [
            _require_str(a, "answer", path, index, parent=f"answers[{j}]")
            for j, a in enumerate(_require(ann, "answers", path, index, kind="list"))
        ]
        entry = (answers, _require_str(ann, "multiple_choice_answer", path, index),
                 _require_str(ann, "answer_type", path, index))  # fmt: skip
        if qid in out:
            dropped += _duplicate(
                keep_first, f"{path}: record {index} is a second annotation of question_id {qid}"
            )
            continue
        out[qid] = entry
    _log_dropped(dropped, path, "annotations")
    return out


def _duplicate(keep_first: bool, what: str) -> int:
    """1 (one repeat dropped) under `keep_first`; otherwise an error naming the repeat."""
    if not keep_first:
        raise FreeBenchError(f"{what}; remove the repeat, or pass --keep-first to keep the first of each")
    return 1


def _log_dropped(dropped: int, path: Path, what: str) -> None:
    if dropped:
        log.warning(
            "%s: dropped %d duplicate %s (--keep-first: the first of each is kept)", path, dropped, what
        )


class _ImageFinder:
    """Resolves and decodes each VQAv2 image once (many questions share an image)."""

    def __init__(self, root: Path, name_format: str, subset: str) -> None:
        self.root, self.name_format, self.subset = root, name_format, subset
        self._by_suffix: dict[str, Path] | None = None
        self._cache: dict[str, dict[str, Any]] = {}

    def image(self, image_id: str, where: str) -> dict[str, Any]:
        if image_id not in self._cache:
            self._cache[image_id] = _image_value(self._locate(image_id, where))
        return self._cache[image_id]

    def _locate(self, image_id: str, where: str) -> Path:
        try:
            number = int(image_id)
            expected = self.root / self.name_format.format(subset=self.subset, image_id=number)
        except (KeyError, IndexError, ValueError) as exc:
            raise FreeBenchError(
                f"{where}: cannot build an image name from image_name_format {self.name_format!r} "
                f"and image_id {image_id!r} ({exc!r}); use the fields {{subset}} and {{image_id}}"
            ) from exc
        if expected.is_file():
            return expected
        if self._by_suffix is None:
            self._by_suffix = _index_by_id(self.root.iterdir())
        found = self._by_suffix.get(f"{number:012d}")
        if found is None:
            raise FreeBenchError(
                f"{where}: image {image_id} not found at {expected}, and no file in {self.root} "
                f"has a name ending in {number:012d}"
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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """Parse a JSON object, naming the file (and line/column) on any failure."""
    if not path.is_file():
        raise FreeBenchError(f"{what} not found: {path}")
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


#: what a field may hold, and how that is said in an error. Null never passes: it would become 'None'.
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "any": ("anything", lambda v: True),
    "id": ("an int or a non-empty string", lambda v: type(v) is int or (isinstance(v, str) and v != "")),
    "str": ("a string", lambda v: isinstance(v, str)),
    "list": ("a list", lambda v: isinstance(v, list)),
}


def _require(
    record: Any, field: str, path: Path, index: int | None, parent: str = "", kind: str = "any"
) -> Any:
    """`record[field]` if it is of `kind`, else an error naming the file, the record index and the field."""
    name = f"{parent}.{field}" if parent else field
    where = f"record {index}" if index is not None else "top level"
    if not (isinstance(record, dict) and field in record):
        raise FreeBenchError(f"{path}: {where} is missing required field {name!r}")
    value, (expected, ok) = record[field], _KINDS[kind]
    if not ok(value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise FreeBenchError(f"{path}: {where} field {name!r} must be {expected}, got {shown}")
    return value


def _require_id(record: Any, field: str, path: Path, index: int) -> str:
    """An id as our string form (JSON ints and strings only: null, bools, floats and lists are refused)."""
    return str(_require(record, field, path, index, kind="id"))


def _require_str(record: Any, field: str, path: Path, index: int, parent: str = "") -> str:
    return _require(record, field, path, index, parent, kind="str")


def _existing_dir(image_dir: str | Path) -> Path:
    root = Path(image_dir)
    if not root.is_dir():
        raise FreeBenchError(f"image folder (--images) not found: {root}")
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
    """A schema row with every field the source lacks left empty (`split` is set by `splitting.label`)."""
    empty = {"question": "", "answers": [], "answer": "", "question_type": "", "difficulty": 0, "captions": [],
             "scene": "", "split": ""}  # fmt: skip
    return {**empty, **fields}


def to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Rows -> a `datasets.Dataset` with exactly `schema.features()`."""
    features = schema.features()
    columns = {name: [r[name] for r in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)
