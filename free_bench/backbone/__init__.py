"""BLIP-2 backbones: `Backbone` and `from_hf` to load one."""

from free_bench.backbone.base import Backbone
from free_bench.backbone.hf import from_hf

__all__ = ["Backbone", "from_hf"]
