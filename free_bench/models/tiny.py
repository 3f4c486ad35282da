"""Tiny random-init BLIP-2 models built from config: no download, for tests and benchmarks.

Random weights from a small `initializer_range` give near-uniform logits that collapse onto one
repeated token; the defaults here use a wider init so greedy decoding walks through many
different tokens, which is what exactness tests need to be meaningful.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration

from free_bench.core.errors import check_choice
from free_bench.models.configs import assemble_blip2

# Vocabulary layout shared by the tiny LMs: ids 0..3 special, the last id is the image placeholder.
TINY_VOCAB = 100
TINY_IMAGE_TOKEN = TINY_VOCAB - 1
# An id the tiny LMs almost never emit, so greedy decoding runs for many tokens.
TINY_EOS = TINY_VOCAB - 2

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
QFORMER = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=TINY_VOCAB
)
_OPT = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=32,
    word_embed_proj_dim=32,
    ffn_dim=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=128,
    pad_token_id=1,
    bos_token_id=2,
    eos_token_id=TINY_EOS,
    init_std=0.5,
)
_T5 = dict(
    vocab_size=TINY_VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=128,
    feed_forward_proj="gated-gelu",
    # Encoder and decoder depths equal: HF sizes generate()'s cache from `num_layers`.
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    pad_token_id=0,
    eos_token_id=TINY_EOS,
    decoder_start_token_id=0,
    initializer_factor=5.0,
)
_TOP_LEVEL = ("num_query_tokens", "image_token_index", "initializer_range")


def tiny_blip2_config(lm_type: str, **overrides: Any) -> Blip2Config:
    """Config of a tiny BLIP-2 with an OPT or T5 LM; `overrides` update the LM (text) config.

    Special keys: `vision_config` / `qformer_config` (dicts merged into those sub-configs) and
    `num_query_tokens`, `image_token_index`, `initializer_range` (top-level BLIP-2 fields).
    """
    check_choice("lm_type", lm_type, ("opt", "t5"))
    vision = {**VISION, **overrides.pop("vision_config", {})}
    qformer = {**QFORMER, **overrides.pop("qformer_config", {})}
    top = {k: overrides.pop(k) for k in _TOP_LEVEL if k in overrides}
    top.setdefault("num_query_tokens", 4)
    text_kwargs = {**(_OPT if lm_type == "opt" else _T5), **overrides}
    top.setdefault("image_token_index", text_kwargs["vocab_size"] - 1)
    return assemble_blip2(lm_type, vision, qformer, text_kwargs, **top)


def build_tiny_blip2(
    lm_type: str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> Blip2ForConditionalGeneration:
    """A deterministic (per `seed`) random-init BLIP-2 in eval mode (fp32 on CPU unless told otherwise).

    `device` builds (and initializes) the weights there directly, which is what makes a random
    model of real size (e.g. OPT-2.7b's LM shape via `overrides`) quick to create on a GPU.
    """
    config = tiny_blip2_config(lm_type, **overrides)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), dev:
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config)
        # Zero-init query tokens make every image look alike to the LM; give them some signal.
        with torch.no_grad():
            model.query_tokens.normal_(0.0, 1.0)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def tiny_inputs(
    model: Blip2ForConditionalGeneration,
    batch_size: int,
    *,
    text_len: int = 4,
    padded: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random `pixel_values` / `input_ids` / `attention_mask` in BLIP-2's placeholder layout.

    Rows get 1..text_len text tokens when `padded` (else all text_len): OPT rows are left-padded
    (`pad, image tokens, BOS, text`), T5 rows right-padded on the encoder side (`image tokens, text, pad`).
    """
    cfg, text = model.config, model.config.text_config
    gen = torch.Generator().manual_seed(seed)
    vision = cfg.vision_config
    pixel_values = torch.randn(batch_size, 3, vision.image_size, vision.image_size, generator=gen)
    low, high = 4, min(text.vocab_size, cfg.image_token_index) - 2  # clear of specials, EOS, image id
    if cfg.image_token_index <= low:  # the embedded vocabulary: specials and <image> first, words after
        low, high = cfg.image_token_index + 1, text.vocab_size
    image = [cfg.image_token_index] * cfg.num_query_tokens
    rows = []
    for b in range(batch_size):
        n = text_len if not padded else 1 + (text_len - 1 - b) % text_len
        words = torch.randint(low, high, (n,), generator=gen).tolist()
        rows.append(image + [text.bos_token_id] + words if text.model_type == "opt" else image + words)
    width = max(map(len, rows))
    pad = text.pad_token_id
    ids = torch.full((batch_size, width), pad, dtype=torch.long)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(width - len(row), width) if text.model_type == "opt" else slice(0, len(row))
        ids[b, span] = torch.tensor(row)
        mask[b, span] = 1
    return {"pixel_values": pixel_values, "input_ids": ids, "attention_mask": mask}
