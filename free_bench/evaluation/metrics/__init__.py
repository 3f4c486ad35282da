"""Task metrics: official VQA accuracy and COCO caption scores (pycocoevalcap)."""

from free_bench.evaluation.metrics.captions import MetricUnavailable, caption_scores, cider_per_image
from free_bench.evaluation.metrics.vqa import (
    DEFAULT_SCORER,
    SCORERS,
    normalize_answer,
    vqa_accuracy,
    vqa_accuracy_batch,
)

__all__ = [
    "DEFAULT_SCORER",
    "SCORERS",
    "MetricUnavailable",
    "caption_scores",
    "cider_per_image",
    "normalize_answer",
    "vqa_accuracy",
    "vqa_accuracy_batch",
]
