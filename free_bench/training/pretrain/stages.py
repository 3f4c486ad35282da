"""Two-stage BLIP-2-style pretraining of the embedded backbone on `scenes`, checkpointed and resumable.

Stage 0 (embedded `scenes` only, `vision_steps` > 0): the ViT alone, on the objects in its patches,
standing in for BLIP-2's pretrained vision encoder (see `vision_stage`).
Stage 1: the language model alone, on text (questions with answers, captions).
Stage 2: vision encoder + Q-Former + projection on image-text pairs (VQA and captioning); the LM is
frozen as in BLIP-2 unless `PretrainConfig.stage2_train_lm` (a documented deviation) unfreezes it.
Batches are drawn from a generator seeded by (seed, stage, step), and the learning rate is a pure
function of the step, so a resumed run continues bit-identically on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import Blip2ForConditionalGeneration, PreTrainedTokenizerBase

from free_bench.config import PretrainConfig
from free_bench.core.errors import FreeBenchError
from free_bench.core.interrupt import StopRequest, deferred_stop
from free_bench.core.records import atomic_path
from free_bench.data import examples as E
from free_bench.training.pretrain.vision import cell_labels, query_head, query_loss, seeded_head, vision_loss


@dataclass
class TrainData:
    """Everything stage 1 and 2 sample from, tokenized once."""

    pixels: torch.Tensor  # (N_img, 3, H, W) uint8
    vqa: list[tuple[int, E.TextPair]]  # (image row, pair)
    captions: list[tuple[int, list[E.TextPair]]]  # (image row, one pair per reference)
    cells: torch.Tensor | None = None  # (N_img, G*G, 3) stage-0 labels per grid cell, when asked for


def prepare(
    split: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, grid: int | None = None
) -> TrainData:
    """Tokenize once; with `grid`, also the stage-0 cell labels from the scene annotations."""
    pixels, index = E.images_tensor(split)
    cols = split.select_columns(["image_id", "question", "answer", "captions"])
    vqa, caps, seen = [], [], set()
    for r in cols:
        img = index[r["image_id"]]
        vqa.append((img, E.vqa_pair(tokenizer, r["question"], r["answer"])))
        if r["image_id"] not in seen:
            seen.add(r["image_id"])
            caps.append((img, [E.caption_pair(tokenizer, c) for c in r["captions"]]))
    cells = cell_labels(split, index, grid) if grid else None
    return TrainData(pixels, vqa, caps, cells)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _sample(data: TrainData, gen: torch.Generator, n: int, caption_fraction: float):
    """(image rows, pairs) of one batch; captions pick one reference at random."""
    n_cap = int(round(n * caption_fraction))
    vq = torch.randint(len(data.vqa), (n - n_cap,), generator=gen).tolist()
    cp = torch.randint(len(data.captions), (n_cap,), generator=gen).tolist()
    ref = torch.randint(1 << 30, (n_cap,), generator=gen).tolist()
    rows = [data.vqa[i] for i in vq]
    for i, r in zip(cp, ref, strict=True):
        image, refs = data.captions[i]
        rows.append((image, refs[r % len(refs)]))
    return [r[0] for r in rows], [r[1] for r in rows]


def _trainable(
    model: Blip2ForConditionalGeneration, stage: int, cfg: PretrainConfig, head, qhead=None
) -> list[dict]:
    lm = list(model.language_model.parameters())
    if stage == 0:
        groups = [
            {"params": [*model.vision_model.parameters(), *head.parameters()], "lr_peak": cfg.lr_vision}
        ]
    elif stage == 1:
        groups = [{"params": lm, "lr_peak": cfg.lr_stage1}]
    else:
        # BLIP-2 freezes its pretrained ViT; a ViT without stage 0 has to learn here
        frozen = ("language_model.", "vision_model.") if cfg.vision_steps else ("language_model.",)
        vision = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
        heads = [*qhead.parameters()] if qhead is not None else []  # only stage 2 uses the query head
        groups = [{"params": vision + heads, "lr_peak": cfg.lr_stage2}]
        if cfg.stage2_train_lm:
            groups.append({"params": lm, "lr_peak": cfg.lr_lm_stage2})
    train = {id(p) for g in groups for p in g["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in train)
    return groups


def _batch(
    model, data: TrainData, rows: list[int], pairs: list[E.TextPair], stage: int, lm_type: str, tok, head,
    qhead=None, qweight: float = 0.0,
):  # fmt: skip
    if stage == 0:
        pixel_values = E.normalize(data.pixels[rows]).to(model.device, non_blocking=True)
        return vision_loss(model, head, pixel_values, data.cells[rows].to(model.device))
    batch = E.collate(
        pairs,
        lm_type=lm_type,
        num_query_tokens=model.config.num_query_tokens,
        image_token_id=model.config.image_token_index,
        bos_token_id=tok.bos_token_id if lm_type == "opt" else None,
        pad_token_id=tok.pad_token_id,
        with_image=stage == 2,
    )
    if stage == 1:
        if lm_type == "opt":  # the LM learns the prompt text too, not only the answer
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, E.IGNORE)
            batch["labels"][:, 0] = E.IGNORE
        return model.language_model(**{k: v.to(model.device) for k, v in batch.items()}).loss
    device = model.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    pixel_values = E.normalize(data.pixels[rows]).to(device, non_blocking=True)
    out = model(pixel_values=pixel_values, **batch)
    if qhead is None:
        return out.loss
    cells = data.cells[rows].to(device)  # (B, G*G, 3)
    return out.loss + qweight * query_loss(out.qformer_outputs.last_hidden_state, qhead, cells)


def train(
    model: Blip2ForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    data: TrainData,
    cfg: PretrainConfig,
    lm_type: str,
    ckpt_dir: Path,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run (or resume) both stages; returns the loss curves and stage times.

    A time limit or Ctrl-C ends the current step, checkpoints it and leaves (`free_bench.core.interrupt`), so
    a cut run resumes where it stopped, not at the last periodic checkpoint."""
    with deferred_stop() as stop:
        log = _stages(
            model, tokenizer, data, cfg, lm_type, ckpt_dir / "pretrain_state.pt", seed, progress, stop
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return log


def _stages(model, tokenizer, data: TrainData, cfg: PretrainConfig, lm_type: str, ckpt: Path, seed: int,
            progress: bool, stop: StopRequest) -> dict:  # fmt: skip
    """The body of `train`: every stage not finished in `ckpt`, from where it stopped."""
    device = next(model.parameters()).device
    state = torch.load(ckpt, weights_only=False) if ckpt.exists() else None
    log: dict = state["log"] if state else {"loss": {}, "seconds": {}}
    head = None
    if cfg.vision_steps:
        if data.cells is None:
            raise FreeBenchError("vision_steps > 0 needs TrainData.cells: prepare(..., grid=...)")
        head = seeded_head(model.config.vision_config.hidden_size, seed).to(device)
    qhead = query_head(model, data.cells, seed).to(device) if cfg.query_cell_weight else None
    if state:
        model.load_state_dict(state["model"])
        if head is not None and state.get("head") is not None:
            head.load_state_dict(state["head"])
        if qhead is not None and state.get("query_head") is not None:
            qhead.load_state_dict(state["query_head"])
    if device.type == "cuda":  # images live on the GPU: no per-step uint8 -> float on the host, no copy
        cells = None if data.cells is None else data.cells.to(device)
        data = replace(data, pixels=data.pixels.to(device), cells=cells)
    model.train()
    torch.backends.cuda.matmul.allow_tf32 = True  # GPU: bf16 autocast + TF32; CPU stays exact fp32
    for stage, steps in ((0, cfg.vision_steps), (1, cfg.stage1_steps), (2, cfg.stage2_steps)):
        start = 0
        if (state and state["stage"] > stage) or steps == 0:
            continue
        log["loss"].setdefault(str(stage), [])
        log["seconds"].setdefault(str(stage), 0.0)
        groups = _trainable(model, stage, cfg, head, qhead)
        opt = torch.optim.AdamW(groups, lr=0.0, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
        if state and state["stage"] == stage and state["optimizer"] is not None:
            opt.load_state_dict(state["optimizer"])
            start = state["step"]
        bar = tqdm(
            range(start, steps),
            desc=f"pretrain stage {stage}",
            disable=not progress,
            initial=start,
            total=steps,
        )
        t0 = time.perf_counter()
        pending: list[torch.Tensor] = []  # losses not yet read: a per-step .item() would stall the GPU queue
        for step in bar:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)
            frac = 0.5 if stage == 1 else cfg.caption_fraction
            if stage == 0:
                rows, pairs = torch.randint(len(data.pixels), (cfg.batch_size,), generator=gen).tolist(), []
            else:
                rows, pairs = _sample(data, gen, cfg.batch_size, frac)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, g["lr_peak"], cfg.warmup_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = _batch(
                    model, data, rows, pairs, stage, lm_type, tokenizer, head, qhead, cfg.query_cell_weight
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            pending.append(loss.detach())
            done = step + 1
            stopping = bool(stop)  # asked to stop: this step is kept (checkpointed), then the run leaves
            save = done % cfg.checkpoint_every == 0 or done == steps or stopping
            if done % 25 == 0 or save:
                values = torch.stack(pending).float().tolist()  # one sync for many steps
                log["loss"][str(stage)].extend(round(v, 5) for v in values)
                pending.clear()
                bar.set_postfix(loss=f"{values[-1]:.3f}")
            if save:
                log["seconds"][str(stage)] += time.perf_counter() - t0
                t0 = time.perf_counter()
                nxt = (stage, done) if done < steps else (stage + 1, 0)
                _save(ckpt, model, opt if done < steps else None, nxt, log, head, qhead)
            if stopping:
                stop.exit()
        state = None
    return log


def _save(path: Path, model, opt, where: tuple[int, int], log: dict, head, qhead=None) -> None:
    payload = {
        "model": model.state_dict(),
        "head": head.state_dict() if head is not None else None,
        "query_head": qhead.state_dict() if qhead is not None else None,
        "optimizer": opt.state_dict() if opt else None,
        "stage": where[0],
        "step": where[1],
        "log": log,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
