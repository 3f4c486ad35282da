"""`load_backbone(spec)`: one entry point for embedded profiles, HF ids, local dirs and in-memory models."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Blip2ForConditionalGeneration

from free_bench.backbone.base import Backbone
from free_bench.backbone.embedded import parse_spec
from free_bench.config import cache_dir
from free_bench.errors import FreeBenchError


def embedded_dir(spec: str, seed: int = 0, root: Path | None = None) -> Path:
    """Cache folder of a pretrained embedded backbone: <cache>/backbones/embedded-<profile>[-t5]-seed<seed>."""
    profile, lm = parse_spec(spec)
    name = f"embedded-{profile}{'-t5' if lm == 't5' else ''}-seed{seed}"
    return (root or cache_dir() / "backbones") / name


def load_backbone(
    spec: str | Path | Blip2ForConditionalGeneration,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    pretrain_if_missing: bool = True,
) -> Backbone:
    """A `Backbone` from `"embedded:<profile>[-t5]"`, an HF id, a local directory or an in-memory model.

    Embedded backbones load from the cache, or are pretrained on first use (with a progress bar).
    """
    from free_bench.backbone.hf import from_hf

    if isinstance(spec, str) and spec.startswith("embedded:"):
        folder = embedded_dir(spec, seed)
        if not (folder / "manifest.json").exists():
            if not pretrain_if_missing:
                raise FreeBenchError(f"{spec} is not pretrained yet (no {folder}); run `free-bench pretrain`")
            from free_bench.backbone.pretrain_run import pretrain

            profile, lm = parse_spec(spec)
            pretrain(profile, lm, folder, seed=seed)
        from free_bench.backbone.pretrain_run import check_current

        check_current(folder, *parse_spec(spec))
        backbone = from_hf(str(folder), device=device, dtype=dtype)
        backbone.spec = spec
        return backbone
    return from_hf(spec, device=device, dtype=dtype)
