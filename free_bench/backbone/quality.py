"""Backbone quality on `scenes`: VQA accuracy per question type, caption scores, and the logit lens.

Predictions come from the layer-by-layer runner (`engine.generate` with no exits), the same code
path the early-exit engine uses, so the quality reported here is the full model's quality there.
"""

from __future__ import annotations

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from free_bench.backbone import examples as E
from free_bench.backbone.base import Backbone
from free_bench.backbone.runner import TeacherForcedOutput, teacher_forced_hidden_states
from free_bench.engine.generate import generate
from free_bench.errors import FreeBenchError
from free_bench.metrics import vqa_accuracy


def pixel_values(backbone: Backbone, images: list) -> torch.Tensor:
    """Through the backbone's own image processor, as a user's real images would go."""
    if backbone.processor is None:
        raise FreeBenchError(f"backbone {backbone.spec} has no image processor")
    pv = backbone.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    return pv.to(backbone.device, backbone.dtype)


def prompt_batch(backbone: Backbone, pairs: list[E.TextPair]) -> dict[str, torch.Tensor]:
    tok = backbone.tokenizer
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


def _chunks(split: datasets.Dataset, n: int, size: int, desc: str, progress: bool):
    n = min(n, len(split))
    for i in tqdm(range(0, n, size), desc=desc, disable=not progress, leave=False):
        yield split.select(range(i, min(i + size, n)))


@torch.inference_mode()
def vqa_predictions(
    backbone: Backbone, split: datasets.Dataset, max_rows: int, batch_size: int = 64, progress: bool = True
) -> pd.DataFrame:
    """One row per question: prediction and official VQA accuracy."""
    out = []
    for chunk in _chunks(split, max_rows, batch_size, "eval vqa", progress):
        pairs = [E.vqa_pair(backbone.tokenizer, q, "") for q in chunk["question"]]
        res = generate(
            backbone,
            pixel_values=pixel_values(backbone, chunk["image"]),
            **prompt_batch(backbone, pairs),
            max_new_tokens=4,
        )
        for r, text in zip(
            chunk.select_columns(["question_id", "question_type", "answers"]), res.text, strict=True
        ):
            pred = text.strip()
            out.append(
                {
                    "question_id": r["question_id"],
                    "question_type": r["question_type"],
                    "prediction": pred,
                    "accuracy": vqa_accuracy(pred, r["answers"]),
                }
            )
    return pd.DataFrame(out)


@torch.inference_mode()
def caption_predictions(
    backbone: Backbone, split: datasets.Dataset, max_images: int, batch_size: int = 64, progress: bool = True
) -> tuple[dict[str, str], dict[str, list[str]]]:
    images = split.select(E.first_rows_per_image(split))
    preds, refs = {}, {}
    for chunk in _chunks(images, max_images, batch_size, "eval captions", progress):
        pairs = [E.caption_pair(backbone.tokenizer, "") for _ in range(len(chunk))]
        res = generate(
            backbone,
            pixel_values=pixel_values(backbone, chunk["image"]),
            **prompt_batch(backbone, pairs),
            max_new_tokens=30,
        )
        for image_id, caps, text in zip(chunk["image_id"], chunk["captions"], res.text, strict=True):
            preds[image_id], refs[image_id] = text.strip(), caps
    return preds, refs


def first_answer_pass(
    backbone: Backbone, pixel_values: torch.Tensor, prompts: dict[str, torch.Tensor]
) -> tuple[TeacherForcedOutput, int]:
    """Teacher-forced pass over VQA prompts, and the position whose logits give the first answer token:
    OPT, the last prompt position (left padding); T5, the first decoder position (decoder start)."""
    if backbone.lm_type == "opt":
        return teacher_forced_hidden_states(backbone, pixel_values, **prompts), -1
    start = backbone.language_model.config.decoder_start_token_id
    dec = torch.full((pixel_values.shape[0], 1), start, dtype=torch.long, device=backbone.device)
    return teacher_forced_hidden_states(backbone, pixel_values, **prompts, decoder_input_ids=dec), 0


@torch.inference_mode()
def logit_lens(
    backbone: Backbone, split: datasets.Dataset, max_rows: int, batch_size: int = 64, progress: bool = True
) -> pd.DataFrame:
    """VQA accuracy of final norm + LM head applied to every layer's state at the first answer token."""
    tok = backbone.tokenizer
    rows: list[dict] = []
    for chunk in _chunks(split, max_rows, batch_size, "logit lens", progress):
        pairs = [E.vqa_pair(tok, q, "") for q in chunk["question"]]
        batch = prompt_batch(backbone, pairs)
        tf, at = first_answer_pass(backbone, pixel_values(backbone, chunk["image"]), batch)
        h = tf.hidden_states[1:, :, at]  # (L, B, D)
        tokens = backbone.logits_from_hidden(h).argmax(-1)  # (L, B)
        for layer in range(tokens.shape[0]):
            words = tok.batch_decode(tokens[layer, :, None], skip_special_tokens=True)
            for answers, word in zip(chunk["answers"], words, strict=True):
                rows.append({"layer": layer + 1, "accuracy": vqa_accuracy(word.strip(), answers)})
    return pd.DataFrame(rows).groupby("layer", as_index=False)["accuracy"].mean()


def caption_metrics(preds: dict[str, str], refs: dict[str, list[str]]) -> dict:
    """pycocoevalcap scores, or a reason why they are missing (never a silent 0)."""
    try:
        from free_bench.metrics import caption_scores

        return caption_scores(preds, refs)
    except (ImportError, FreeBenchError) as e:  # no pycocoevalcap (GPU image) or no Java
        return {"missing": f"caption scores not computed here: {e}; score the saved predictions elsewhere"}


def evaluate_quality(
    backbone: Backbone,
    ds: datasets.DatasetDict,
    split: str = "test",
    max_rows: int = 1000,
    progress: bool = True,
) -> dict:
    """The numbers the backbone issue asks for, as a JSON-ready dict."""
    vqa = vqa_predictions(backbone, ds[split], max_rows, progress=progress)
    per_type = vqa.groupby("question_type")["accuracy"].mean().round(4).to_dict()
    preds, refs = caption_predictions(backbone, ds[split], max_rows // 2, progress=progress)
    lens = logit_lens(backbone, ds[split], max_rows, progress=progress)
    return {
        "split": split,
        "vqa_rows": len(vqa),
        "vqa_accuracy": round(float(vqa["accuracy"].mean()), 4),
        "vqa_accuracy_by_type": per_type,
        "captions": caption_metrics(preds, refs),
        "caption_predictions": preds,
        "logit_lens": {int(r.layer): round(float(r.accuracy), 4) for r in lens.itertuples()},
    }
