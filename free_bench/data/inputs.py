"""Input preparation shared by training, decoding and evaluation: pixel values through the backbone's
own image processor, prompt batches collated as the LM expects them.

`backbone` is any loaded BLIP-2 wrapper (`models.Backbone`): these functions read only its processor,
tokenizer, config, device and dtype, so the data layer needs nothing from the models layer.
"""

from __future__ import annotations

from typing import Any

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.data import examples as E

NO_PROCESSOR = (
    "backbone {} holds no processor (tokenizer and image processor): save the checkpoint's Blip2Processor "
    "beside its weights (`Blip2Processor.from_pretrained(id).save_pretrained(dir)`)"
)


def pixel_values(backbone: Any, images: list) -> torch.Tensor:
    """Through the backbone's own image processor, as a user's real images would go."""
    if backbone.processor is None:
        raise FreeBenchError(NO_PROCESSOR.format(backbone.spec))
    pv = backbone.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    return pv.to(backbone.device, backbone.dtype)


def prompt_batch(backbone: Any, pairs: list[E.TextPair]) -> dict[str, torch.Tensor]:
    tok = backbone.tokenizer
    if tok is None:
        raise FreeBenchError(NO_PROCESSOR.format(backbone.spec))
    batch = E.collate(
        pairs,
        lm_type=backbone.lm_type,
        num_query_tokens=backbone.model.config.num_query_tokens,
        image_token_id=backbone.model.config.image_token_index,
        bos_token_id=tok.bos_token_id if backbone.lm_type == "opt" else None,
        pad_token_id=tok.pad_token_id,
        with_target=False,
    )
    return {k: v.to(backbone.device) for k, v in batch.items()}
