"""The one sample schema every dataset (scenes, COCO Karpathy, VQAv2) is exposed in.

A row is one (image, question) pair. Captioning uses the same rows de-duplicated by `image_id`;
VQA uses rows whose `answers` is non-empty. Fields a source does not have are empty
(`question == ""`, `answers == []`, `captions == []`), never invented.
"""

from __future__ import annotations

import datasets

from free_bench.config import SPLITS  # noqa: F401  (re-exported: the split names)

COLUMNS: dict[str, str] = {
    "image": "the RGB image (datasets.Image)",
    "image_id": "stable id of the image, unique within a dataset",
    "question_id": "stable id of the (image, question) row, unique within a dataset",
    "question": "the VQA question text ('' for caption-only sources)",
    "answers": "the 10 human-style answers in VQA format ([] where unlabelled)",
    "answer": "the most frequent answer ('' where unlabelled)",
    "question_type": "question family: exist, color, shape, size, count, relation (or the source's type)",
    "difficulty": "graded difficulty level, 1 (easiest) .. 4 (0 where unknown)",
    "captions": "reference captions of the image ([] where unlabelled)",
    "scene": "JSON of the generating object list (scenes only; '' elsewhere)",
    "split": "the split the row belongs to",
}


def features() -> datasets.Features:
    """Arrow features of one split; shared by the generator and the real-data loaders."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "question_id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "difficulty": datasets.Value("int32"),
            "captions": datasets.Sequence(datasets.Value("string")),
            "scene": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )
