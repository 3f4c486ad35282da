"""Per-exit evaluation without skipping: every exit's VQA answer, teacher-forced, on a split.

The exit's answer is its argmax at the first answer position (the last prompt position), the same
decision the logit lens reads: exact for `scenes`, whose canonical answers are one word. The result
is tidy, one row per (question, exit layer): the correctness matrix of the overthinking and
mid-crisis analyses. The final layer of the backbone is always included (as `exit_kind="final"`).
"""

from __future__ import annotations

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from free_bench.backbone import examples as E
from free_bench.backbone.quality import pixel_values, prompt_batch
from free_bench.backbone.runner import teacher_forced_hidden_states
from free_bench.errors import FreeBenchError
from free_bench.methods.base import ExitMethod
from free_bench.metrics import vqa_accuracy


@torch.inference_mode()
def per_exit_vqa(
    method: ExitMethod,
    split: datasets.Dataset,
    max_rows: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Columns: question_id, question_type, layer, exit_kind (exit|final), prediction, confidence, accuracy."""
    bb = method.backbone
    if bb.lm_type != "opt":
        raise FreeBenchError("per-exit evaluation supports OPT backbones for now (T5: planned)")
    if not any(split.select(range(min(len(split), 50)))["answers"]):
        raise FreeBenchError("per-exit evaluation needs a labelled split (answers)")
    n = len(split) if max_rows is None else min(max_rows, len(split))
    tok, rows = bb.tokenizer, []
    for start in tqdm(range(0, n, batch_size), desc=f"per-exit eval {method.name}", disable=not progress):
        chunk = split.select(range(start, min(start + batch_size, n)))
        batch = prompt_batch(bb, [E.vqa_pair(tok, q, "") for q in chunk["question"]])
        tf = teacher_forced_hidden_states(bb, pixel_values(bb, chunk["image"]), **batch)
        heads = [
            (k, "exit", method.exit_logits(k, tf.hidden_states[k], tf.attention_mask)[:, -1])
            for k in method.layers
        ]
        heads.append((bb.num_layers, "final", bb.logits_from_hidden(tf.hidden_states[-1][:, -1])))
        for layer, kind, logits in heads:  # logits (B, V) at the first answer position (left padding)
            probs = logits.float().softmax(-1)
            conf, ids = probs.max(-1)
            words = tok.batch_decode(ids[:, None], skip_special_tokens=True)
            for r, word, c in zip(
                chunk.select_columns(["question_id", "question_type", "answers"]),
                words,
                conf.tolist(),
                strict=True,
            ):
                rows.append(
                    {
                        "question_id": r["question_id"],
                        "question_type": r["question_type"],
                        "layer": layer,
                        "exit_kind": kind,
                        "prediction": word.strip(),
                        "confidence": c,
                        "accuracy": vqa_accuracy(word.strip(), r["answers"]),
                    }
                )
    return pd.DataFrame(rows)


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean VQA accuracy per exit layer and the final layer (columns) by question type (rows, plus 'all')."""
    col = df["layer"].astype(str).where(df["exit_kind"] == "exit", "final")
    order = [str(k) for k in sorted(df.loc[df["exit_kind"] == "exit", "layer"].unique())] + ["final"]
    by_type = df.assign(column=col).pivot_table(index="question_type", columns="column", values="accuracy")
    overall = df.assign(column=col).groupby("column")["accuracy"].mean().rename("all").to_frame().T
    return pd.concat([overall, by_type])[order].round(4)
