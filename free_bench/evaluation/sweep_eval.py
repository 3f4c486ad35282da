"""The two ways a sweep evaluates a threshold: offline from recorded exit scores, or by live decoding.

Simulated: one teacher-forced pass per batch over prompt + continuation (VQA: the labelled answer,
so the first token is the engine's exact decision; captions: the full model's own caption) records
every consulted exit's token and scores (`simulate.exit_scores`); a threshold is then `choose` plus
a table lookup. Live: `engine.generate` per batch at every threshold, timed; the full model is timed
once per batch beside them, through the same engine and through HF `generate()`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import datasets
import torch
from tqdm.auto import tqdm

from free_bench.data import examples as E
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine.cost import CostModel
from free_bench.engine.generate import generate, graph_decoder, special_tokens
from free_bench.engine.simulate import ExitScores, choose, exit_scores
from free_bench.engine.timing import time_region
from free_bench.evaluation.metrics import vqa_accuracy
from free_bench.methods.protocol import ExitMethod
from free_bench.models import runner
from free_bench.models.base import Backbone
from free_bench.training.batches import MAX_NEW, teacher_forced_batch

TASK_ROWS = {"vqa": lambda s: s, "caption": lambda s: s.select(E.first_rows_per_image(s))}


@dataclass
class Outputs:
    """What one threshold produced on a task: texts per row, the exit layers of its tokens, and per-row
    costs and times (`rows`) for bootstrap CIs over samples."""

    texts: list[str] = field(default_factory=list)
    exit_layers: list[int] = field(default_factory=list)
    spent: float = 0.0
    full: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    timer: str = "none"
    rows: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ROW_FIELDS})
    depths: list[list[int]] = field(default_factory=list)  # per row, the exit layer of each generated token
    speculative: dict[str, int] = field(default_factory=dict)  # summed drafted / accepted / verify_passes
    batch_spent: float = 0.0  # live: the batches' own count, each layer once per step if any row ran it
    batch_full: float = 0.0

    def add(self, res, index: int, own_ms: float, times: dict[str, float]) -> None:
        """One decoded batch (a GenerateResult): texts, exit layers, costs, and its times per row."""
        self.texts.extend(res.text)
        real = res.exit_layers > 0  # (b, T)
        self.exit_layers.extend(res.exit_layers[real].tolist())
        self.spent += res.cost_layers
        self.full += res.full_cost_layers
        self.batch_spent += res.batch_cost_layers
        self.batch_full += res.batch_full_cost_layers
        self.latencies_ms.append(own_ms)
        b = len(res.exit_layers)
        depth = (res.exit_layers * real).sum(1).double() / real.sum(1).clamp(min=1)  # (b,) mean exit layer
        shares = {"cost_layers": res.cost_layers, "full_cost_layers": res.full_cost_layers, "latency_ms": own_ms,
                  **times}  # fmt: skip
        for key, v in shares.items():
            self.rows[key].extend([v / b] * b)
        self.rows["batch"].extend([index] * b)
        self.rows["exit_layer_mean"].extend(depth.tolist())
        self.depths.extend(row[keep].tolist() for row, keep in zip(res.exit_layers, real, strict=True))
        for key in ("drafted", "accepted", "verify_passes") if getattr(res, "speculative", None) else ():
            self.speculative[key] = self.speculative.get(key, 0) + res.speculative[key]

    def summary(self) -> dict:
        hist = Counter(self.exit_layers)
        return {
            "expected_speedup": self.full / self.spent if self.spent else float("nan"),
            "mean_exit_layer": sum(self.exit_layers) / len(self.exit_layers)
            if self.exit_layers
            else float("nan"),
            "exit_layer_hist": json.dumps({str(k): hist[k] for k in sorted(hist)}),
            # a batch's layers once per step if any row ran them, beside the per-row count above
            "expected_batch_speedup": self.batch_full / self.batch_spent if self.batch_spent else float("nan"),
            **self._speculative_summary(),
        }

    def _speculative_summary(self) -> dict:
        """Speculative decoding: the share of drafted tokens the full model kept, and the tokens each
        verification pass yielded (NaN for greedy decoding)."""
        s, nan = self.speculative, float("nan")
        if not s:
            return {"acceptance_rate": nan, "tokens_per_pass": nan}
        return {"acceptance_rate": s["accepted"] / s["drafted"] if s["drafted"] else nan,
                "tokens_per_pass": len(self.exit_layers) / s["verify_passes"] if s["verify_passes"] else nan}  # fmt: skip


# Per-row numbers a sweep point keeps (records.SWEEP_SAMPLES). In a batch of B rows, the batch's costs
# and times are attributed evenly (1/B each); exact at batch 1.
ROW_FIELDS = (
    "exit_layer_mean",
    "cost_layers",
    "full_cost_layers",
    "latency_ms",
    "engine_ms",
    "hf_ms",
    "batch",
    "prefix_ms",
)


def prompts_for(backbone: Backbone, rows: datasets.Dataset, task: str) -> list[E.TextPair]:
    tok = backbone.tokenizer
    if task == "vqa":
        return [E.vqa_pair(tok, q, "", backbone.prompts["vqa"]) for q in rows["question"]]
    return [E.caption_pair(tok, "", backbone.prompts["caption"]) for _ in range(len(rows))]


def quality(task: str, rows: datasets.Dataset, texts: list[str],
            scorer: str = "lavis") -> tuple[dict[str, float], list[float]]:  # fmt: skip
    """The task's metric over the rows, and per row. VQA: accuracy by `scorer`'s rule. Captions: CIDEr
    (its corpus value is the mean of the per-image values), or NaN (reported missing) where
    pycocoevalcap is absent."""
    if task == "vqa":
        acc = [vqa_accuracy(t, a, scorer=scorer) for t, a in zip(texts, rows["answers"], strict=True)]
        return {"vqa_accuracy": sum(acc) / len(acc)}, acc
    try:
        from free_bench.evaluation.metrics.captions import cider_per_image

        keys = [str(i) for i in rows["image_id"]]
        preds = dict(zip(keys, texts, strict=True))
        refs = {k: list(c) for k, c in zip(keys, rows["captions"], strict=True)}
        per = cider_per_image(preds, refs)
        values = [per[k] for k in keys]
        return {"CIDEr": sum(values) / len(values)}, values
    except ImportError:
        return {"CIDEr": float("nan")}, [float("nan")] * len(texts)


def sample_ids(task: str, rows: datasets.Dataset) -> list[str]:
    return [str(i) for i in rows["question_id" if task == "vqa" else "image_id"]]


# --- simulated ------------------------------------------------------------------------------------
@dataclass(eq=False)
class Recorded:
    """Exit scores at every decided position of a split, in (row, step) order."""

    scores: ExitScores
    row: torch.Tensor  # (N,) row index in the task's rows
    step: torch.Tensor  # (N,) position of the token in the row's output
    tf_seconds: float = 0.0  # the backbone's teacher-forced pass alone (without the exit modules)


@torch.inference_mode()
def record(method: ExitMethod, rows: datasets.Dataset, task: str, batch_size: int) -> Recorded:
    """The one teacher-forced pass of a simulated sweep (VQA: labelled answers; captions: own output)."""
    regime = "semi" if task == "vqa" else "unsupervised"
    parts, rix, steps, tf_s = [], [], [], 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows.select(range(start, min(start + batch_size, len(rows))))
        t0 = _synced_clock(method)
        tf = teacher_forced_batch(method.backbone, chunk, regime, task)
        tf_s += _synced_clock(method) - t0
        pos = tf.loss_mask.nonzero()  # (n, 2) row-major: rows, then their positions in order
        parts.append(exit_scores(method, tf.hidden, tf.mask, pos, tf.encoder))
        rix.append(pos[:, 0] + start)
        first = tf.loss_mask.argmax(1)  # (b,) first decided column of each row
        steps.append(pos[:, 1] - first[pos[:, 0]])
    merged = ExitScores(
        parts[0].layers,
        *(torch.cat([getattr(p, f) for p in parts], dim=-1) for f in ("tokens", "max_prob", "entropy")),
        None if parts[0].similarity is None else torch.cat([p.similarity for p in parts], dim=-1),
        *(torch.cat([getattr(p, f) for p in parts]) for f in ("final_tokens", "final_prob")),
        parts[0].num_layers,
    )  # fmt: skip
    # thresholds are evaluated on the host (the H200 chains at commit 8c2b62a: 14 ms a threshold on the GPU, six
    # processes sharing it, against record passes of 4-7 s: 20-39 % on top of the pass)
    return Recorded(merged.cpu(), torch.cat(rix).cpu(), torch.cat(steps).cpu(), tf_s)


def _synced_clock(method: ExitMethod) -> float:
    """perf_counter after the device's queued work is done (CUDA runs asynchronously)."""
    if method.backbone.device.type == "cuda":
        torch.cuda.synchronize(method.backbone.device)
    return time.perf_counter()


def step_costs(
    cost: CostModel, method: ExitMethod, rec: Recorded, index: torch.Tensor, policy: str
) -> torch.Tensor:
    """(N,) layer-equivalents each decided position would spend under `policy`, priced as the engine
    prices them (deferred: its catch-up work depends on the decode order and is not simulated)."""
    num_exits = len(rec.scores.layers)
    depth = torch.tensor([*rec.scores.layers, cost.num_layers], dtype=torch.float64)
    extra = torch.tensor([cost.exit_extra.get(k, 0.0) for k in rec.scores.layers], dtype=torch.float64)
    reads = method.rule in ("max_prob", "entropy", "patience")
    per_check = extra + (cost.head if reads else 0.0)  # (E,)
    checked = torch.cat([torch.zeros(1, dtype=torch.float64), per_check.cumsum(0)])  # (E+1,) exits 0..i-1
    idx = index.cpu()
    fired = idx < num_exits
    upto = (idx + 1).clamp(max=num_exits)  # exits consulted: through the one that fired, or all
    head_once = torch.where(fired, 0.0 if reads else cost.head, cost.head)  # the head that picks the token
    if policy == "full":  # every layer and every exit, then the model's head
        return cost.full + float(per_check.sum()) + torch.where(fired, 0.0 if reads else cost.head, 0.0)
    spent = depth[idx] + checked[upto] + head_once
    if policy == "propagate":
        gen = 1.0 if getattr(method, "generators", None) is not None else 0.0
        deeper = gen * (num_exits - upto).double()  # generator caches above the exit
        spent += torch.where(fired, (cost.num_layers - depth[idx] + deeper) * cost.kv_fill, 0.0)
    return spent


def simulated_outputs(
    method: ExitMethod, rec: Recorded, threshold: float | None, cost: CostModel, policy: str, n_rows: int
) -> tuple[list[tuple[int, ...]], Outputs]:
    """Token ids per row (cut after the first chosen EOS) and their costs, for one threshold; with
    `threshold=None`, the full model (its own token at every position, every layer). Vectorised:
    a sweep evaluates this once per threshold."""
    if threshold is None:
        tokens = rec.scores.final_tokens
        layers = torch.full_like(tokens, cost.num_layers)
        spent = torch.full(tokens.shape, cost.full, dtype=torch.float64)
    else:
        choice = choose(method, rec.scores, threshold)
        tokens, layers = choice.tokens, choice.exit_layers
        spent = step_costs(cost, method, rec, choice.index, policy)
    tokens, layers = tokens.cpu(), layers.cpu()
    eos_ids, _ = special_tokens(method.backbone)
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, dtype=torch.long)).long()  # (N,)
    before = is_eos.cumsum(0) - is_eos  # EOS chosen strictly before each position (whole split)
    row_start = torch.zeros(n_rows, dtype=torch.long).index_reduce_(
        0, rec.row.cpu(), before, "amin", include_self=False
    )
    keep = before == row_start[rec.row.cpu()]  # no EOS yet in this row: the position is decoded
    kept_rows = rec.row.cpu()[keep]
    counts = torch.bincount(kept_rows, minlength=n_rows)  # (R,) decoded tokens per row
    flat, ends = tokens[keep].tolist(), counts.cumsum(0).tolist()  # one host list, sliced per row
    seqs = [tuple(flat[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)] if n_rows else []
    out = Outputs(exit_layers=layers[keep].tolist(), spent=float(spent[keep].sum()))
    out.full = cost.full * int(keep.sum())
    per_row = torch.zeros(n_rows, dtype=torch.float64)
    row_cost = per_row.index_add(0, kept_rows, spent[keep].double().cpu())
    row_layers = per_row.index_add(0, kept_rows, layers[keep].double())
    nan = [float("nan")] * n_rows
    out.rows = {"exit_layer_mean": (row_layers / counts.clamp(min=1)).tolist(), "cost_layers": row_cost.tolist(),
                "full_cost_layers": (counts.double() * cost.full).tolist(), "latency_ms": nan, "engine_ms": nan,
                "hf_ms": nan, "batch": list(range(n_rows)), "prefix_ms": nan}  # fmt: skip
    return seqs, out


# --- live -----------------------------------------------------------------------------------------
def warm_batches(shapes: list[tuple], warmup: int, seen: set | None = None) -> list[int]:
    """Indices of the batches to run untimed first: the first `warmup`, then (unless `warmup` is 0) the
    first batch of every input shape not among them. One-off work per shape (the graphs engine captures
    its prompt pass once per prompt length; kernels pick their algorithm per shape) then stays out of
    the timed calls: one timed call per batch (the default) keeps no median to hide it (the H200 run at commit cc101e5's
    H200 sweeps: captures of 35-98 ms inside single timed decodes of 2-4 ms). `seen` holds the shapes
    warmed earlier in this process for the same decoders, and gains these: a shape is warmed once, not
    at every threshold point (commit 8c2b62a, H200: warming every shape at every point cost 70 s of 286)."""
    if warmup <= 0:
        return []
    seen = set() if seen is None else seen
    head = set(range(min(warmup, len(shapes))))
    first: dict[tuple, int] = {}
    for k, shape in enumerate(shapes):
        if shape not in seen:
            first.setdefault(shape, k)  # (B, ...) pixel and prompt shapes -> the first batch that has them
    seen.update(shapes[k] for k in head)
    seen.update(first)
    return sorted(head | set(first.values()))


def warmed_shapes(backbone: Backbone, method: ExitMethod | None, engine: str, policy: str,
                  threshold: float | None, *, decode: str = "greedy", draft_len: int = 0,
                  compact: bool = True) -> set:  # fmt: skip
    """The shapes already warmed in this process for these decoders. Eager one-off work per shape is
    the process's (kernel choice, allocator): one set per backbone. The graphs engine captures per
    decoder (the method's, its policy, and the static exit's layer) and per way of decoding with it
    (speculative spans of up to draft_len + 1 positions; the smaller buckets compaction moves rows
    into): one set per such decoder and way, so a method kept across sweeps warms each anew."""
    if engine == "eager":
        owner, key = backbone, ("eager",)
    else:
        static = threshold if method is not None and method.rule == "static" else None
        drafts = draft_len if decode == "speculative" else 0
        owner = method if method is not None else backbone
        key = (engine, policy, static, decode, drafts, compact)
    return owner.__dict__.setdefault("_warmed_shapes", {}).setdefault(key, set())


def live_points(
    backbone: Backbone, method: ExitMethod | None, rows: datasets.Dataset, task: str, batch_size: int,
    thresholds: list[float], policy: str, warmup: int, repeats: int, compact: bool = True, engine: str = "eager",
    hf: bool = True, decode: str = "greedy", draft_len: int = 4, progress: bool = False,
) -> tuple[dict[float, Outputs], Outputs, dict[str, float]]:  # fmt: skip
    """Decode every batch through the engine at each threshold (timed), with the references timed once
    per batch beside them, interleaved: HF `generate()`, the engine with exits off, the prefix alone
    (vision tower, Q-Former: what no exit can skip), then the early-exit decode at every threshold, so
    that clock or load drift hits them alike and every threshold's speedup is paired with the same
    references. Timing the references once per batch rather than once per threshold makes a sweep of
    T thresholds cost T early-exit decodes and one set of references per batch.

    Returns each threshold's outputs, the full model's (from the timed decodes) and the references'
    summed times {"engine_ms", "hf_ms", "prefix_ms"}. `hf=False` leaves HF `generate()` out (at BLIP-2
    size it is the slowest of the three and the engine's full model is the faster baseline): its times
    are then NaN."""
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.select(range(start, min(start + batch_size, len(rows))))
        batches.append((pixel_values(backbone, chunk["image"]), prompt_batch(backbone, prompts_for(backbone, chunk, task))))
    new = MAX_NEW[task]
    thresholds = [] if method is None else list(thresholds)

    def references(pv: torch.Tensor, prompts: dict, last: dict) -> dict:
        def hf_generate() -> None:
            backbone.model.generate(pixel_values=pv, **prompts, do_sample=False, max_new_tokens=new)

        def full_model() -> None:
            last["full"] = generate(backbone, pixel_values=pv, **prompts, max_new_tokens=new, engine=engine)

        def prefix() -> None:  # vision tower, Q-Former, projection: the part of every decode no exit skips
            ids, am = prompts["input_ids"], prompts.get("attention_mask")
            with torch.inference_mode():
                if engine == "graphs":  # the engine's own prefix: its image side is a captured graph
                    graph_decoder(backbone, None, "full", None, ids, new).prefix(pv, ids, am)
                else:
                    runner.prefix(backbone, pv, ids, am)

        return {**({"hf_ms": hf_generate} if hf else {}), "engine_ms": full_model, "prefix_ms": prefix}

    def early(pv: torch.Tensor, prompts: dict, last: dict, t: float):
        def run() -> None:
            last[t] = generate(backbone, method, pixel_values=pv, **prompts, max_new_tokens=new, threshold=t,
                               kv_policy=policy, compact=compact, engine=engine, decode=decode,
                               draft_len=draft_len)  # fmt: skip

        return run

    def runners(pv: torch.Tensor, prompts: dict, last: dict) -> dict:
        return {**references(pv, prompts, last), **{t: early(pv, prompts, last, t) for t in thresholds}}

    shapes = [(tuple(pv.shape), tuple(p["input_ids"].shape)) for pv, p in batches]
    warm: set[int] = set()  # each decoder's shapes not yet warmed in this process (the references' with the first)
    for t in thresholds or [None]:
        seen = warmed_shapes(backbone, method, engine, policy, t, decode=decode, draft_len=draft_len,
                             compact=compact)  # fmt: skip
        warm.update(warm_batches(shapes, warmup, seen))
    for k in sorted(warm):
        for fn in runners(*batches[k], {}).values():  # allocator, kernels, lazy init, graph captures
            fn()
    lat: dict = {key: [] for key in ("hf_ms", "engine_ms", "prefix_ms", *thresholds)}
    points = {t: Outputs() for t in thresholds}
    full_out, timer = Outputs(), "none"
    label = f"live {'full model' if method is None else method.name} {task}, {len(thresholds)} threshold(s)"
    for index, (pv, prompts) in enumerate(tqdm(batches, desc=label, disable=not progress, leave=False)):
        last: dict = {}
        for name, fn in runners(pv, prompts, last).items():
            timing = time_region(fn, warmup=0, repeats=repeats, device=backbone.device, dtype=backbone.dtype,
                                 batch_size=len(pv))  # fmt: skip
            lat[name].append(timing.median_ms)
            timer = timing.timer
        if not hf:
            lat["hf_ms"].append(float("nan"))
        times = {key: lat[key][-1] for key in ("engine_ms", "hf_ms", "prefix_ms")}
        full_out.add(last["full"], index, lat["engine_ms"][-1], times)
        for t in thresholds:
            points[t].add(last[t], index, lat[t][-1], times)
    for out in [full_out, *points.values()]:
        out.timer = timer
    return points, full_out, {key: sum(lat[key]) for key in ("engine_ms", "hf_ms", "prefix_ms")}
