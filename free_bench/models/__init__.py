"""BLIP-2 backbones: `load_backbone` for embedded profiles, HF ids, local dirs and in-memory models."""

from free_bench.models.base import Backbone
from free_bench.models.embedded_cache import embedded_dir
from free_bench.models.hf import from_hf
from free_bench.models.load import load_backbone

__all__ = ["Backbone", "embedded_dir", "from_hf", "load_backbone"]
