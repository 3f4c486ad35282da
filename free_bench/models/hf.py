"""Load a BLIP-2 as a `Backbone`: from an HF id (cache only when offline), a local directory, or memory.

Every failure a user can fix (no cached copy, not a BLIP-2, unsupported LM, no CUDA) becomes a
FreeBenchError that says what to do instead of a deep HF traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, Blip2ForConditionalGeneration, Blip2Processor

from free_bench.core.errors import FreeBenchError
from free_bench.models.base import LM_TYPES, Backbone

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda if available else cpu; a cuda request without CUDA is an error, not a fallback."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FreeBenchError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FreeBenchError(
                f"device {str(device)!r} requested but CUDA is not available; use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FreeBenchError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU; names like 'bf16' accepted."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise FreeBenchError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(sorted(_DTYPES))}")


def backbone_from_model(
    model: Blip2ForConditionalGeneration,
    *,
    tokenizer: Any = None,
    processor: Any = None,
    spec: str = "<in-memory>",
    prompts: dict[str, str] | None = None,
) -> Backbone:
    """Wrap an already built / loaded BLIP-2, checking its language model is one we run. `prompts`:
    per task, over LAVIS's for its LM family (`models.prompts`)."""
    if not isinstance(model, Blip2ForConditionalGeneration):
        raise FreeBenchError(f"expected a Blip2ForConditionalGeneration, got {type(model).__name__}")
    lm_type = _lm_type(model.config, spec)
    layers = (
        model.language_model.model.decoder.layers if lm_type == "opt" else model.language_model.decoder.block
    )
    return Backbone(model, lm_type, len(layers), tokenizer=tokenizer, processor=processor, spec=spec,
                    prompts=dict(prompts or {}))  # fmt: skip


def from_hf(
    spec: str | os.PathLike | Blip2ForConditionalGeneration,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    prompts: dict[str, str] | None = None,
) -> Backbone:
    """Load a BLIP-2 (OPT or T5 LM) from an HF id, a local directory, or an in-memory model.

    In-memory models are moved/cast only when `device`/`dtype` are given. Nothing is downloaded
    when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set: the id must be in the local HF cache. A
    directory is named by its absolute path (exits record it); its `prompts.json`, if any, and then
    `prompts` override LAVIS's prompts.
    """
    from free_bench.models.prompts import check_prompts, read_prompts

    if isinstance(spec, Blip2ForConditionalGeneration):
        model = spec
        if device is not None or dtype is not None:
            dev = resolve_device(device) if device is not None else None
            model = model.to(device=dev, dtype=resolve_dtype(dtype, dev) if dtype is not None else None)
        return backbone_from_model(model.eval(), prompts=check_prompts(prompts or {}, "prompts"))
    if not isinstance(spec, (str, os.PathLike)):
        raise FreeBenchError(
            f"backbone spec must be an HF id, a directory or a BLIP-2 model, got {type(spec).__name__}"
        )
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    name = os.fspath(spec)
    path = Path(name).expanduser()
    own = None
    if path.is_dir():
        _check_directory(path)
        name = str(path.resolve())
        own = read_prompts(path)
    elif name.startswith((".", os.sep, "~")) or name.endswith(os.sep):  # a path, not an HF id
        raise FreeBenchError(f"backbone directory {name!r} does not exist")
    local_only = _offline()
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=local_only)
        if getattr(config, "model_type", None) != "blip-2":
            raise FreeBenchError(
                f"{name!r} is a {config.model_type!r} model, not a BLIP-2 (model_type 'blip-2')"
            )
        _lm_type(config, name)
        model = Blip2ForConditionalGeneration.from_pretrained(
            name, dtype=torch_dtype, local_files_only=local_only
        )
    except FreeBenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub/IO errors come in many types; all mean "not obtainable"
        raise FreeBenchError(_not_found_message(name, path.is_dir(), exc)) from exc
    processor = _load_processor(name, local_only)
    tokenizer = getattr(processor, "tokenizer", None)
    chosen = {**(own or {}), **check_prompts(prompts or {}, "--prompt")}
    return backbone_from_model(model.to(dev).eval(), tokenizer=tokenizer, processor=processor, spec=name,
                               prompts=chosen)  # fmt: skip


def _lm_type(config: Any, spec: str) -> str:
    lm = getattr(getattr(config, "text_config", None), "model_type", None)
    if lm not in LM_TYPES:
        raise FreeBenchError(
            f"{spec!r}: BLIP-2 language model {lm!r} is not supported; supported: {', '.join(LM_TYPES)}"
        )
    return lm


def _check_directory(path: Path) -> None:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FreeBenchError(
            f"{str(path)!r} holds no config.json: not a saved BLIP-2 (save_pretrained output)"
        )
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise FreeBenchError(f"{str(cfg_file)!r} is unreadable: {exc}") from None
    if model_type != "blip-2":
        raise FreeBenchError(
            f"{str(path)!r} holds a {model_type!r} model, not a BLIP-2 (model_type 'blip-2')"
        )


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f and f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _not_found_message(name: str, is_dir: bool, exc: Exception) -> str:
    if is_dir:
        return f"could not load the BLIP-2 in {name!r}: {type(exc).__name__}: {exc}"
    return (
        f"cannot load {name!r}: it is not in the local Hugging Face cache and could not be downloaded "
        f"({type(exc).__name__}). On a connected machine run `huggingface-cli download {name}` and copy "
        "the HF cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this machine, or pass a local "
        "directory written by save_pretrained()."
    )


def _load_processor(name: str, local_only: bool) -> Any:
    """The processor (image transforms + tokenizer) if saved alongside the model; None otherwise."""
    try:
        return Blip2Processor.from_pretrained(name, local_files_only=local_only)
    except Exception:  # noqa: BLE001 - a missing processor only disables text decoding
        return None
