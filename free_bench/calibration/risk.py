"""Per-sample losses of an exit method's thresholds, from live decoding, for Learn-then-Test.

Each threshold's answers are decoded through the engine (eager, greedy, `propagate`: what a sweep's
live points run), beside the full model's on the same inputs, so a loss compares the answer a user
would get with the answer the full model gives:

- `consistency` (CALM's textual consistency, no labels): 1 when the early-exit answer differs from
  the full model's after the scorer's answer normalisation (LAVIS normalises every prediction before
  scoring, so answers it cannot tell apart are not counted as different);
- `accuracy`: the drop of the VQA accuracy against the full model's on the same sample,
  max(0, acc_full - acc_exit), in [0, 1].

Live decoding rather than the teacher-forced simulation: the simulation's later tokens follow the
labelled answer, not the exits' own choices, and a certificate should speak of what is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from free_bench.core.errors import check_choice
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine.generate import generate
from free_bench.engine.timing import time_region
from free_bench.evaluation.metrics.vqa import normalize_answer, vqa_accuracy
from free_bench.evaluation.sweep_eval import prompts_for
from free_bench.methods.protocol import ExitMethod
from free_bench.training.batches import MAX_NEW

RISKS = ("consistency", "accuracy")


@dataclass(frozen=True)
class Decoded:
    """One decode of the rows: answers, each row's mean exit layer, and the layer-equivalents spent."""

    texts: list[str]
    exit_layer_mean: list[float]
    cost_layers: float
    full_cost_layers: float


@torch.inference_mode()
def decode(method: ExitMethod, rows: datasets.Dataset, threshold: float | None, *, batch_size: int = 16,
           kv_policy: str = "propagate", progress: bool = False) -> Decoded:  # fmt: skip
    """The rows' VQA answers through the eager engine: the method at `threshold`, or (None) the full model."""
    bb = method.backbone
    texts, depth, spent, full = [], [], 0.0, 0.0
    starts = range(0, len(rows), batch_size)
    label = "full model" if threshold is None else f"{method.name} at {threshold:g}"
    for start in tqdm(starts, desc=f"decode {label}", disable=not progress, leave=False):
        chunk = rows.select(range(start, min(start + batch_size, len(rows))))
        pv = pixel_values(bb, chunk["image"])
        prompts = prompt_batch(bb, prompts_for(bb, chunk, "vqa"))
        if threshold is None:
            res = generate(bb, pixel_values=pv, **prompts, max_new_tokens=MAX_NEW["vqa"])
        else:
            res = generate(bb, method, pixel_values=pv, **prompts, max_new_tokens=MAX_NEW["vqa"],
                           threshold=threshold, kv_policy=kv_policy)  # fmt: skip
        real = res.exit_layers > 0  # (b, T) generated positions
        texts.extend(res.text)
        depth.extend(((res.exit_layers * real).sum(1).double() / real.sum(1).clamp(min=1)).tolist())
        spent += float(res.cost_layers)
        full += float(res.full_cost_layers)
    return Decoded(texts, depth, spent, full)


def losses(method: ExitMethod, rows: datasets.Dataset, thresholds: list[float], *, risk: str = "consistency",
           scorer: str = "lavis", batch_size: int = 16, progress: bool = True) -> pd.DataFrame:  # fmt: skip
    """Per threshold and sample: the loss under `risk`, the answer and the full model's, their accuracies,
    the mean exit layer; per threshold, the expected speedup (layer count) in `expected_speedup`."""
    check_choice("risk", risk, RISKS)
    ids = [str(q) for q in rows["question_id"]]
    answers = rows["answers"]
    full = decode(method, rows, None, batch_size=batch_size)
    full_acc = [vqa_accuracy(t, a, scorer=scorer) for t, a in zip(full.texts, answers, strict=True)]
    full_norm = [normalize_answer(t) for t in full.texts]
    frames = []
    for t in tqdm(thresholds, desc=f"calibrate {method.name}", disable=not progress):
        out = decode(method, rows, t, batch_size=batch_size)
        acc = [vqa_accuracy(x, a, scorer=scorer) for x, a in zip(out.texts, answers, strict=True)]
        if risk == "consistency":
            loss = [float(normalize_answer(x) != f) for x, f in zip(out.texts, full_norm, strict=True)]
        else:
            loss = [max(0.0, f - a) for a, f in zip(acc, full_acc, strict=True)]
        frames.append(pd.DataFrame({
            "threshold": float(t), "sample_id": ids, "loss": loss, "answer": out.texts, "full_answer": full.texts,
            "value": acc, "full_value": full_acc, "exit_layer_mean": out.exit_layer_mean,
            "expected_speedup": out.full_cost_layers / out.cost_layers if out.cost_layers else float("nan"),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def timed_speedup(method: ExitMethod, rows: datasets.Dataset, threshold: float, *, batch_size: int = 16,
                  kv_policy: str = "propagate", warmup: int = 1) -> tuple[float, str]:  # fmt: skip
    """The measured speedup of `threshold` on the rows: the full model's and the exits' decodes of each
    batch timed one after the other (so drift hits both alike), summed; the first `warmup` batches run
    untimed first. Returns (full time / exit time, the timer: cuda_event or cpu_wall)."""
    bb = method.backbone
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.select(range(start, min(start + batch_size, len(rows))))
        batches.append((pixel_values(bb, chunk["image"]), prompt_batch(bb, prompts_for(bb, chunk, "vqa"))))

    def runs(pv: torch.Tensor, prompts: dict) -> tuple:
        full = lambda: generate(bb, pixel_values=pv, **prompts, max_new_tokens=MAX_NEW["vqa"])  # noqa: E731
        early = lambda: generate(bb, method, pixel_values=pv, **prompts, max_new_tokens=MAX_NEW["vqa"],  # noqa: E731
                                 threshold=threshold, kv_policy=kv_policy)  # fmt: skip
        return full, early

    sums, timer = [0.0, 0.0], "none"
    with torch.inference_mode():
        for pv, prompts in batches[:warmup]:
            for fn in runs(pv, prompts):
                fn()
        for pv, prompts in batches:
            for i, fn in enumerate(runs(pv, prompts)):
                t = time_region(fn, warmup=0, repeats=1, device=bb.device, dtype=bb.dtype, batch_size=len(pv))
                sums[i] += t.median_ms
                timer = t.timer
    return (sums[0] / sums[1] if sums[1] else float("nan")), timer
