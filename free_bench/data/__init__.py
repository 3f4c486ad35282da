"""Data: the embedded `scenes` generator, real-data loaders (COCO Karpathy, VQAv2), perturbations."""

from __future__ import annotations

from free_bench.config import DATASETS
from free_bench.data.schema import COLUMNS, SPLITS, features

__all__ = ["COLUMNS", "DATASETS", "SPLITS", "features"]
