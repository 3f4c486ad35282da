"""BLIP-2 backbones: `load_backbone` for embedded profiles, HF ids, local dirs and in-memory models."""

from free_bench.backbone.base import Backbone
from free_bench.backbone.hf import from_hf
from free_bench.backbone.load import embedded_dir, load_backbone

__all__ = ["Backbone", "embedded_dir", "from_hf", "load_backbone"]
