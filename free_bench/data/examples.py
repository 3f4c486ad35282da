"""Turn dataset rows into padded token tensors for pretraining and evaluation (no per-step tokenizing).

OPT (decoder-only): [<image>]*Q <s> prompt target </s>, loss on the target only.
T5 (encoder-decoder): encoder [<image>]*Q prompt </s>; decoder labels target </s>.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100
# the embedded backbone's prompts (models.prompts gives a real BLIP-2 LAVIS's, e.g. "Question: {} Answer:")
PROMPT_VQA = "question: {} answer:"
PROMPT_CAPTION = "a picture of"


@dataclass(frozen=True)
class TextPair:
    prompt: list[int]  # token ids of the prompt, no special tokens
    target: list[int]  # token ids of the answer or caption, </s> appended


def images_tensor(split: datasets.Dataset) -> tuple[torch.Tensor, dict[str, int]]:
    """Each distinct image once, as uint8 (N, 3, H, W), and image_id -> row in that tensor."""
    ids = split["image_id"]
    first: dict[str, int] = {}
    for i, image_id in enumerate(ids):
        first.setdefault(image_id, i)
    rows = list(first.values())
    arrays = [np.asarray(split[i]["image"].convert("RGB")) for i in rows]  # (H, W, 3)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return pixels, {image_id: k for k, image_id in enumerate(first)}


def first_rows_per_image(split: datasets.Dataset) -> list[int]:
    """Index of the first row of each distinct image, in order (captions are per image, not per row)."""
    first: dict[str, int] = {}
    for i, image_id in enumerate(split["image_id"]):
        first.setdefault(image_id, i)
    return list(first.values())


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1], as the embedded processor does (mean 0.5, std 0.5)."""
    return pixels.float().div(255.0).sub(0.5).div(0.5)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def vqa_pair(tokenizer: PreTrainedTokenizerBase, question: str, answer: str, prompt: str = PROMPT_VQA) -> TextPair:
    """`prompt`: a template with one `{}` for the question (LAVIS's `prompt.format(question)`)."""
    return TextPair(
        encode(tokenizer, prompt.format(question)),
        encode(tokenizer, answer) + [tokenizer.eos_token_id],
    )


def caption_pair(tokenizer: PreTrainedTokenizerBase, caption: str, prompt: str = PROMPT_CAPTION) -> TextPair:
    return TextPair(encode(tokenizer, prompt), encode(tokenizer, caption) + [tokenizer.eos_token_id])


def collate(
    pairs: list[TextPair],
    *,
    lm_type: str,
    num_query_tokens: int,
    image_token_id: int,
    bos_token_id: int | None,
    pad_token_id: int,
    with_image: bool = True,
    with_target: bool = True,
) -> dict[str, torch.Tensor]:
    """Batch tensors. Training batches (with_target) pad on the right; prompts alone on the left."""
    q = num_query_tokens if with_image else 0
    image = [image_token_id] * q
    if lm_type == "opt":
        bos = [bos_token_id] if bos_token_id is not None else []
        seqs = [image + bos + p.prompt + (p.target if with_target else []) for p in pairs]
        n_prefix = [q + len(bos) + len(p.prompt) for p in pairs]
        ids, mask = _pad(seqs, pad_token_id, left=not with_target)
        out = {"input_ids": ids, "attention_mask": mask}
        if with_target:
            labels = ids.clone()
            for i, n in enumerate(n_prefix):
                labels[i, :n] = IGNORE
            labels[mask == 0] = IGNORE
            out["labels"] = labels
        return out
    seqs = [image + p.prompt + [_eos(p)] for p in pairs]
    ids, mask = _pad(seqs, pad_token_id, left=False)
    out = {"input_ids": ids, "attention_mask": mask}
    if with_target:
        labels, lmask = _pad([p.target for p in pairs], pad_token_id, left=False)
        labels[lmask == 0] = IGNORE
        out["labels"] = labels
    return out


def _eos(p: TextPair) -> int:
    return p.target[-1]  # the target always ends with </s>


def _pad(seqs: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        sl = slice(n - len(s), n) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask
