"""Teacher-forced batches for exit training, computed once: the backbone is frozen, so every layer's
hidden states of a row never change, and each training step runs the exit modules only.

Semi regime: prompt + the labelled answer; the targets are the answer tokens. Unsupervised regime:
no label is read; the full model answers the question itself (greedy, through the same runner) and
the exits learn to match its token distributions at those positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import torch
from tqdm.auto import tqdm

from free_bench.config import TASKS
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.data import examples as E
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine import generate
from free_bench.models.base import Backbone
from free_bench.models.runner import teacher_forced_hidden_states
from free_bench.models.runner_state import Encoded
from free_bench.training.distributed import SINGLE, Dist, check_batch

IGNORE = -100
log = logging.getLogger(__name__)


@dataclass
class TFBatch:
    hidden: torch.Tensor  # (L+1, B, T, D): [0] = layer-1 input, [k] = output of layer k
    mask: torch.Tensor  # (B, T) 1 at real positions
    loss_mask: torch.Tensor  # (B, T) 1 where the logits predict an answer token
    targets: (
        torch.Tensor | None
    )  # (B, T) answer ids at loss positions, IGNORE elsewhere; None if unsupervised
    encoder: Encoded | None = None  # T5: the prefix's encoder output (T5 generator exits read it)


class TeacherForcedBatches(Sequence[TFBatch]):
    """The training split's fixed batches, each computed by one teacher-forced pass when first asked
    for. Up to `keep_mib` of hidden states are kept (None: all, the embedded profiles' small splits,
    computed up front); beyond that every batch is recomputed when the loop visits it again, so at
    most one batch of all-layer hidden states is alive and memory does not grow with the split."""

    def __init__(self, backbone: Backbone, plan: list[tuple[str, datasets.Dataset]], regime: str,
                 keep_mib: float | None, progress: bool = True) -> None:  # fmt: skip
        self.backbone, self.plan, self.regime, self.keep_mib = backbone, plan, regime, keep_mib
        self.kept: dict[int, TFBatch] = {}
        self.last: tuple[int, TFBatch] | None = None
        self.passes = 0  # teacher-forced passes run (a streamed batch counts each time)
        self.batch_mib = 0.0
        if plan and self._keeps_all():
            for i in tqdm(range(len(plan)), desc=f"teacher forcing ({regime})", disable=not progress):
                self[i]

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> TFBatch:  # type: ignore[override]
        if i in self.kept:
            return self.kept[i]
        if self.last is not None and self.last[0] == i:
            return self.last[1]
        self.last = None  # the previous streamed batch goes before the next one is made
        task, rows = self.plan[i]
        batch = teacher_forced_batch(self.backbone, rows, self.regime, task)
        self.passes += 1
        mib = batch.hidden.numel() * batch.hidden.element_size() / 2**20
        self.batch_mib = max(self.batch_mib, mib)
        if self.keep_mib is None or (len(self.kept) + 1) * self.batch_mib <= self.keep_mib:
            self.kept[i] = batch
        else:
            self.last = (i, batch)
        return batch

    def _keeps_all(self) -> bool:
        """Whether every batch fits the budget, judged by the first batch's size."""
        first = self[0]
        if self.keep_mib is None:
            return True
        est = self.batch_mib * len(self.plan)
        keeps = est <= self.keep_mib
        log.info("teacher-forced hidden states: %.1f MiB a batch, %d batches (%.0f MiB); budget %.0f MiB: %s",
                 self.batch_mib, len(self.plan), est, self.keep_mib,
                 "kept" if keeps else "recomputed at each visit (streamed)")  # fmt: skip
        if not keeps:
            self.kept.clear()
            self.last = (0, first)
        return keeps

    @property
    def streamed(self) -> bool:
        return len(self.kept) < len(self.plan)


def teacher_forced_batches(
    backbone: Backbone,
    split: datasets.Dataset,
    regime: str,
    batch_size: int,
    max_rows: int | None = None,
    tasks: tuple[str, ...] = ("vqa", "caption"),
    progress: bool = True,
    dist: Dist = SINGLE,
    keep_mib: float | None = None,
) -> TeacherForcedBatches:
    """Fixed batches of `split`: its VQA rows, then one caption per distinct image; hidden states
    detached on the backbone's device, kept up to `keep_mib` (None: all) and else recomputed when
    visited. Under data parallelism each rank keeps its own share of every global batch of
    `batch_size` rows."""
    check_choice("regime", regime, ("semi", "unsupervised"))
    check_batch(batch_size, dist)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise FreeBenchError(f"unknown task(s) {bad or tasks}; valid: {', '.join(TASKS)}")
    if keep_mib is not None and keep_mib < 0:
        raise FreeBenchError(f"keep_mib must be >= 0 or None, got {keep_mib}")
    n = len(split) if max_rows is None else min(max_rows, len(split))
    if n == 0:
        raise FreeBenchError("no rows to train exits on")
    split = split.select(range(n))
    plan: list[tuple[str, datasets.Dataset]] = []
    for task in tasks:
        rows = split if task == "vqa" else split.select(E.first_rows_per_image(split))
        if task == "vqa":
            rows = rows.filter(bool, input_columns="question", keep_in_memory=True)
        if len(rows) == 0:
            raise FreeBenchError(f"no {task} rows in this split (no questions); choose --tasks caption")
        label = "answer" if task == "vqa" else "captions"
        if regime == "semi" and not any(rows.select(range(min(len(rows), 50)))[label]):
            raise FreeBenchError(f"regime 'semi' needs a labelled split ({label}) for {task}; this one has none")
        for start in range(0, len(rows), batch_size):
            plan.append((task, rows.select(dist.share(start, min(start + batch_size, len(rows))))))
    return TeacherForcedBatches(backbone, plan, regime, keep_mib, progress=progress and dist.main)


MAX_NEW = {"vqa": 6, "caption": 30}


@torch.no_grad()
def teacher_forced_batch(backbone: Backbone, rows: datasets.Dataset, regime: str, task: str) -> TFBatch:
    """One batch: prompts + labels (semi) or + the full model's own output (unsupervised)."""
    tok = backbone.tokenizer
    pixels = pixel_values(backbone, rows["image"])
    if task == "vqa":
        pairs = [E.vqa_pair(tok, q, "", backbone.prompts["vqa"]) for q in rows["question"]]
    else:
        pairs = [E.caption_pair(tok, "", backbone.prompts["caption"]) for _ in range(len(rows))]
    prompts = prompt_batch(backbone, pairs)
    if regime == "semi":  # the label: the answer, or the first reference caption
        labels = rows["answer"] if task == "vqa" else [caps[0] for caps in rows["captions"]]
        answers = [E.encode(tok, a) + [tok.eos_token_id] for a in labels]
    else:  # the full model's own output: no label is read
        res = generate(backbone, pixel_values=pixels, **prompts, max_new_tokens=MAX_NEW[task])
        answers = [until_eos(t.tolist(), tok.eos_token_id) for t in res.tokens]
    return teacher_force(backbone, pixels, prompts, answers, with_targets=regime == "semi")


def teacher_force(
    backbone: Backbone, pixels: torch.Tensor, prompts: dict, answers: list[list[int]], with_targets: bool
) -> TFBatch:
    """Every layer's hidden states over prompt + `answers` (token ids), and where they are predicted."""
    tok = backbone.tokenizer
    width = max(len(a) for a in answers)
    target_ids = torch.full((len(answers), width), tok.pad_token_id, dtype=torch.long)  # (B, Tt)
    target_mask = torch.zeros_like(target_ids)
    for i, a in enumerate(answers):
        target_ids[i, : len(a)] = torch.tensor(a)
        target_mask[i, : len(a)] = 1
    tf = teacher_forced_hidden_states(
        backbone,
        pixels,
        prompts["input_ids"],
        prompts["attention_mask"],
        target_ids=target_ids.to(backbone.device),
        target_attention_mask=target_mask.to(backbone.device),
    )
    B, T = tf.attention_mask.shape
    dev = tf.attention_mask.device
    loss_mask = torch.zeros(B, T, dtype=torch.long, device=dev)
    loss_mask[:, tf.target_slice] = target_mask.to(dev)
    targets = None
    if with_targets:
        targets = torch.full((B, T), IGNORE, dtype=torch.long, device=dev)
        targets[:, tf.target_slice] = target_ids.to(dev).masked_fill(target_mask.to(dev) == 0, IGNORE)
    return TFBatch(tf.hidden_states.detach(), tf.attention_mask, loss_mask, targets, tf.encoder)


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
