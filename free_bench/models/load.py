"""`load_backbone(spec)`: one entry point for embedded profiles, HF ids, local dirs and in-memory models."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Blip2ForConditionalGeneration

from free_bench.core.errors import FreeBenchError
from free_bench.models.base import Backbone
from free_bench.models.embedded import parse_spec
from free_bench.models.embedded_cache import check_current, embedded_dir, pretrain_command


def load_backbone(
    spec: str | Path | Blip2ForConditionalGeneration,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    prompts: dict[str, str] | None = None,
) -> Backbone:
    """A `Backbone` from `"embedded:<profile>[-t5]"`, an HF id, a local directory or an in-memory model.

    Embedded backbones load from the cache and are never trained here: one that is not cached is an
    error naming the `free-bench pretrain` command that makes it (minutes of silent training inside a
    load would hide where the time goes). `seed` picks which pretraining of an embedded profile.
    `prompts` (task -> prompt) override the backbone's own (`models.prompts`).
    """
    from free_bench.models.hf import from_hf

    if isinstance(spec, str) and spec.startswith("embedded:"):
        folder = embedded_dir(spec, seed)
        if not (folder / "manifest.json").exists():
            raise FreeBenchError(
                f"{spec} (pretraining seed {seed}) is not pretrained yet: no {folder}; "
                f"make it with `{pretrain_command(spec, seed)}`"
            )
        check_current(folder, *parse_spec(spec))
        from free_bench.models.prompts import EMBEDDED

        backbone = from_hf(str(folder), device=device, dtype=dtype, prompts={**EMBEDDED, **(prompts or {})})
        backbone.spec = spec
        backbone.seed = seed
        return backbone
    return from_hf(spec, device=device, dtype=dtype, prompts=prompts)
