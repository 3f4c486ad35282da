"""Per-exit evaluation without skipping: every exit's VQA answer and caption, teacher-forced.

The exit's answer is its argmax at the first answer position (the last prompt position), the same
decision the logit lens reads: exact for `scenes`, whose canonical answers are one word. The result
is tidy, one row per (question, exit layer): the correctness matrix of the overthinking and
mid-crisis analyses. The final layer of the backbone is always included (as `exit_kind="final"`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from free_bench.core.errors import FreeBenchError
from free_bench.data import examples as E
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine import generate
from free_bench.evaluation.metrics import vqa_accuracy
from free_bench.methods import ExitMethod
from free_bench.models.runner import first_answer_pass
from free_bench.training.batches import MAX_NEW, teacher_force, until_eos

log = logging.getLogger(__name__)

@torch.inference_mode()
def per_exit_vqa(
    method: ExitMethod,
    split: datasets.Dataset,
    max_rows: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    scorer: str = "lavis",
) -> pd.DataFrame:
    """Columns: question_id, question_type, layer, exit_kind (exit|final), prediction, confidence,
    accuracy (by `scorer`'s VQA rule)."""
    bb = method.backbone
    split = split.filter(bool, input_columns="answers", keep_in_memory=True)  # questions with answers
    if len(split) == 0:
        raise FreeBenchError("per-exit VQA evaluation needs a labelled split (questions with answers)")
    n = len(split) if max_rows is None else min(max_rows, len(split))
    tok, rows = bb.tokenizer, []
    for start in tqdm(range(0, n, batch_size), desc=f"per-exit eval {method.name}", disable=not progress):
        chunk = split.select(range(start, min(start + batch_size, n)))
        batch = prompt_batch(bb, [E.vqa_pair(tok, q, "", bb.prompts["vqa"]) for q in chunk["question"]])
        tf, at = first_answer_pass(bb, pixel_values(bb, chunk["image"]), batch)
        h, mask = tf.hidden_states, tf.attention_mask
        heads = [(k, "exit", method.exit_logits(k, h[k], mask, tf.encoder)[:, at]) for k in method.layers]
        heads.append((bb.num_layers, "final", bb.logits_from_hidden(h[-1][:, at])))
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
                        "accuracy": vqa_accuracy(word.strip(), r["answers"], scorer=scorer),
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


@torch.inference_mode()
def per_exit_captions(
    method: ExitMethod,
    split: datasets.Dataset,
    max_images: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Each exit's caption, teacher-forced on the full model's own greedy caption (no skipping).

    At every caption position the exit predicts the next token from the full model's prefix; its
    argmax sequence, cut at the first EOS, is its caption. The final layer reproduces the full model's
    caption exactly. Columns: image_id, layer, exit_kind, prediction, references.
    """
    bb, tok = method.backbone, method.backbone.tokenizer
    images = split.select(E.first_rows_per_image(split))
    n = len(images) if max_images is None else min(max_images, len(images))
    rows = []
    for start in tqdm(range(0, n, batch_size), desc=f"per-exit captions {method.name}", disable=not progress):
        chunk = images.select(range(start, min(start + batch_size, n)))
        pixels = pixel_values(bb, chunk["image"])
        prompts = prompt_batch(bb, [E.caption_pair(tok, "", bb.prompts["caption"]) for _ in range(len(chunk))])
        full = generate(bb, pixel_values=pixels, **prompts, max_new_tokens=MAX_NEW["caption"])
        answers = [until_eos(t.tolist(), tok.eos_token_id) for t in full.tokens]
        b = teacher_force(bb, pixels, prompts, answers, with_targets=False)
        heads = [(k, "exit", method.exit_logits(k, b.hidden[k], b.mask, b.encoder)) for k in method.layers]
        heads.append((bb.num_layers, "final", bb.logits_from_hidden(b.hidden[-1])))
        for layer, kind, logits in heads:  # (B, T, V)
            ids = logits.argmax(-1)  # (B, T)
            for i, r in enumerate(chunk.select_columns(["image_id", "captions"])):
                seq = until_eos(ids[i][b.loss_mask[i].bool()].tolist(), tok.eos_token_id)
                rows.append(
                    {
                        "image_id": r["image_id"],
                        "layer": layer,
                        "exit_kind": kind,
                        "prediction": tok.decode(seq, skip_special_tokens=True).strip(),
                        "references": list(r["captions"]),
                    }
                )
    return pd.DataFrame(rows)


def caption_score_table(df: pd.DataFrame, meteor: bool = False) -> pd.DataFrame:
    """pycocoevalcap scores per exit layer (tidy: layer, exit_kind, metric, value), every layer scored
    after one tokenizer run (METEOR only when asked: a Java start per layer); where the scorer cannot
    run (no pycocoevalcap or Java) the rows say so in `missing` and carry no value."""
    from free_bench.core.errors import FreeBenchError
    from free_bench.evaluation.metrics.captions import caption_scores_by_group

    groups = {f"{layer}|{kind}": g for (layer, kind), g in df.groupby(["layer", "exit_kind"])}
    refs = {i: list(r) for i, r in zip(df["image_id"], df["references"], strict=True)}
    try:
        preds = {key: dict(zip(g["image_id"], g["prediction"], strict=True)) for key, g in groups.items()}
        scores = caption_scores_by_group(preds, refs, skip_meteor=not meteor)
    except (ImportError, FreeBenchError) as e:  # no pycocoevalcap (GPU image) or no Java
        why = f"caption scores not computed here: {e}; score the saved predictions elsewhere"
        return pd.DataFrame(
            [
                {
                    "layer": int(k.split("|")[0]),
                    "exit_kind": k.split("|")[1],
                    "metric": "CIDEr",
                    "value": None,
                    "missing": why,
                }
                for k in groups
            ]  # fmt: skip
        )
    return pd.DataFrame(
        [
            {
                "layer": int(k.split("|")[0]),
                "exit_kind": k.split("|")[1],
                "metric": m,
                "value": v,
                "missing": None,
            }
            for k, s in scores.items()
            for m, v in s.items()
        ]  # fmt: skip
    )


def evaluate_exit_run(
    exits: Path,
    out: Path,
    *,
    splits: tuple[str, ...] = ("val", "test"),
    tasks: tuple[str, ...] = ("vqa", "caption"),
    max_rows: int | None = None,
    device: str | None = None,
    data: Path | None = None,
    backbone: str | None = None,
    prompts: dict[str, str] | None = None,
    scorer: str = "lavis",
) -> list[Path]:
    """Every exit of the run in `exits` evaluated teacher-forced on `splits`: per_exit_<split>.parquet
    (VQA) and the caption tables into `out`; returns the files written. Checks everything first.
    `data`, `backbone`, `prompts`: as `evaluation.trained` resolves them (default: what the run recorded)."""
    from free_bench.core.errors import check_choice
    from free_bench.core.records import write_json, write_parquet
    from free_bench.core.runs import check_writable, writer_lock
    from free_bench.evaluation.metrics.vqa import SCORERS
    from free_bench.evaluation.trained import open_exits, run_data, run_record

    exits, out = Path(exits), Path(out)
    if not ((exits / "config.json").is_file() and (exits / "manifest.json").is_file()):
        raise FreeBenchError(f"{exits} holds no trained exits (no config.json and manifest.json of a finished train-exits run)")
    if max_rows is not None and max_rows < 1:
        raise FreeBenchError(f"--max-rows must be >= 1, got {max_rows}")
    bad_tasks = [t for t in tasks if t not in ("vqa", "caption")]
    if bad_tasks:
        raise FreeBenchError(f"unknown task(s) {bad_tasks}; valid: vqa, caption")
    check_choice("scorer", scorer, SCORERS)
    record = run_record(exits)
    source = run_data(record, data)
    rows = {s: source.split(s, need="per-exit evaluation") for s in splits}
    check_writable(out)
    method = open_exits(exits, backbone=backbone, prompts=prompts, device=device, record=record)
    regime = record.get("regime", "none")
    tag = {"method": method.name, "regime": regime}
    written = []
    with writer_lock(out):
        for split in splits:
            if "vqa" in tasks:
                df = per_exit_vqa(method, rows[split], max_rows, scorer=scorer)
                written.append(write_parquet(df.assign(split=split, scorer=scorer, **tag),
                                             out / f"per_exit_{split}.parquet"))  # fmt: skip
                log.info("%s (%s) on %s: VQA accuracy (%s) per exit layer\n%s", method.name, regime, split,
                         scorer, accuracy_table(df).to_string())  # fmt: skip
            if "caption" in tasks:
                caps = per_exit_captions(method, rows[split], max_rows)
                path = out / f"per_exit_captions_{split}.parquet"
                written.append(write_parquet(caps.assign(split=split, **tag), path))
                scores = caption_score_table(caps).assign(split=split, **tag)
                written.append(write_parquet(scores, out / f"per_exit_caption_scores_{split}.parquet"))
                table = scores.pivot_table(index="metric", columns="layer", values="value").round(3)
                log.info("%s (%s) on %s: caption scores per exit layer (teacher-forced)\n%s", method.name,
                         regime, split, table.to_string())  # fmt: skip
        written.append(write_json({"exits": str(exits.resolve()), "backbone": method.backbone.spec,
                                   "prompts": method.backbone.prompts, "scorer": scorer, "data": source.ref,
                                   "dataset_hash": source.hash, "splits": list(splits), "tasks": list(tasks),
                                   "max_rows": max_rows}, out / "eval_manifest.json"))  # fmt: skip
    log.info("wrote %s", out)
    return written

