"""Backbone quality on `scenes`: VQA accuracy per question type, caption scores, and the logit lens.

Predictions come from the layer-by-layer runner (`engine.generate` with no exits), the same code
path the early-exit engine uses, so the quality reported here is the full model's quality there.
"""

from __future__ import annotations

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from free_bench.core.errors import FreeBenchError
from free_bench.data import examples as E
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine.generate import generate
from free_bench.evaluation.metrics import DEFAULT_SCORER, vqa_accuracy
from free_bench.models.base import Backbone
from free_bench.models.runner import first_answer_pass


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
        pairs = [E.vqa_pair(backbone.tokenizer, q, "", backbone.prompts["vqa"]) for q in chunk["question"]]
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
        pairs = [E.caption_pair(backbone.tokenizer, "", backbone.prompts["caption"]) for _ in range(len(chunk))]
        res = generate(
            backbone,
            pixel_values=pixel_values(backbone, chunk["image"]),
            **prompt_batch(backbone, pairs),
            max_new_tokens=30,
        )
        for image_id, caps, text in zip(chunk["image_id"], chunk["captions"], res.text, strict=True):
            preds[image_id], refs[image_id] = text.strip(), caps
    return preds, refs


@torch.inference_mode()
def logit_lens(
    backbone: Backbone, split: datasets.Dataset, max_rows: int, batch_size: int = 64, progress: bool = True
) -> pd.DataFrame:
    """VQA accuracy of final norm + LM head applied to every layer's state at the first answer token."""
    tok = backbone.tokenizer
    rows: list[dict] = []
    for chunk in _chunks(split, max_rows, batch_size, "logit lens", progress):
        pairs = [E.vqa_pair(tok, q, "", backbone.prompts["vqa"]) for q in chunk["question"]]
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
        from free_bench.evaluation.metrics import caption_scores

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
        "vqa_scorer": DEFAULT_SCORER,  # the rule of every accuracy here (evaluation.metrics.vqa)
        "vqa_accuracy": round(float(vqa["accuracy"].mean()), 4),
        "vqa_accuracy_by_type": per_type,
        "captions": caption_metrics(preds, refs),
        "caption_predictions": preds,
        "logit_lens": {int(r.layer): round(float(r.accuracy), 4) for r in lens.itertuples()},
    }
