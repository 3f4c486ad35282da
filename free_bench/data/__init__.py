"""Data: the embedded `scenes` generator, real-data loaders (COCO Karpathy, VQAv2), perturbations."""

from __future__ import annotations

from free_bench.data.schema import COLUMNS, SPLITS, features

DATASETS: tuple[str, ...] = ("scenes", "coco-karpathy", "vqav2")

__all__ = ["COLUMNS", "DATASETS", "SPLITS", "features"]
