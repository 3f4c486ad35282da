"""One place that assembles a `Blip2Config` from its parts (used by the embedded and tiny models)."""

from __future__ import annotations

from typing import Any

from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig, T5Config

from free_bench.core.errors import check_choice


def assemble_blip2(
    lm_type: str, vision: dict[str, Any], qformer: dict[str, Any], text: dict[str, Any], **top: Any
) -> Blip2Config:
    """ViT + Q-Former + OPT/T5 text config -> Blip2Config; `top` holds BLIP-2 fields (query count, ...)."""
    check_choice("lm_type", lm_type, ("opt", "t5"))
    text_config = OPTConfig(**text) if lm_type == "opt" else T5Config(**text)
    return Blip2Config(
        vision_config=Blip2VisionConfig(**vision),
        qformer_config=Blip2QFormerConfig(**qformer),
        text_config=text_config,
        **top,
    )
