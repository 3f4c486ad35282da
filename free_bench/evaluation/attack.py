"""Slowdown attack on early exits (DeepSloth, Hong et al. 2021): how much of the speedup an adversary
who perturbs the image within an L-inf budget can take away.

Projected signed-gradient steps (Madry et al.) in [0, 1] image space, from a random start in the ball,
lower every consulted exit's confidence by the method's own rule, so tokens leave later. The objective
is read on a teacher-forced pass over the prompt and the full model's own clean greedy answer (no
label is read). The rows are then decoded live, clean and attacked, with the early-exit engine and
with the full model, timed side by side.

The gradient pass runs HF's own LM forward (inputs_embeds from `runner.prefix`) rather than the
engine's layer loop, whose in-place KV store autograd cannot differentiate; tests/unit/test_runner.py
checks that both give the same hidden states below the last layer, the only ones an exit reads here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch

from free_bench.config import ReproduceConfig
from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest, atomic_dir, read_json, write_parquet
from free_bench.core.runs import check_writable, writer_lock
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine.generate import generate
from free_bench.engine.timing import time_region
from free_bench.evaluation import sweep_eval as S
from free_bench.methods import ExitMethod, get_method, rules
from free_bench.models import runner
from free_bench.models.base import Backbone
from free_bench.models.runner_state import Encoded
from free_bench.training.batches import MAX_NEW, until_eos

log = logging.getLogger(__name__)
CONDITIONS = ("clean", "attacked")
TIMED = ("latency_ms", "full_latency_ms", "measured_speedup")  # clock readings: the only non-deterministic columns


@dataclass(frozen=True)
class AttackSettings:
    """The adversary: L-inf budget `eps` and `step_size` in [0, 1] pixel units, `steps` signed-gradient
    steps, `seed` of the random start (each row's own generator, so the batch size changes nothing)."""

    eps: float
    steps: int
    step_size: float
    seed: int

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise FreeBenchError(f"eps is an L-inf budget in [0, 1] pixel units: need 0 < eps <= 1, got {self.eps}")
        if self.steps < 1 or not self.step_size > 0 or self.seed < 0:
            raise FreeBenchError(f"need steps >= 1, step_size > 0, seed >= 0; got {self.steps}, {self.step_size}, {self.seed}")


def default_threshold(rule: str, layers: tuple[int, ...]) -> float:
    """The middle point (the lower one of an even grid) of the rule's default sweep grid,
    `rules.thresholds_for` at `free-bench reproduce`'s grid size: 0.5 for probabilities and cosines,
    2.5 nats for entropies, the middle patience of 1..E."""
    grid = rules.thresholds_for(rule, list(layers), ReproduceConfig().grid)
    return grid[(len(grid) - 1) // 2]


def speedup_taken(clean_expected: float, attacked_expected: float) -> float:
    """Share of the clean speedup's gain (over 1x) the attack removes; NaN when there was no gain."""
    if not clean_expected > 1:
        return float("nan")
    return (clean_expected - attacked_expected) / (clean_expected - 1)


def consulted(method: ExitMethod) -> tuple[int, ...]:
    """The exits a decode consults (one at the last layer never is): those an attack can push past."""
    layers = tuple(k for k in method.layers if k < method.backbone.num_layers)
    if not layers:
        raise FreeBenchError(f"{method.name}: no exit below the last layer {method.backbone.num_layers}; nothing to attack")
    return layers


def exit_objective(method: ExitMethod, pv: torch.Tensor, prompts: dict, answers: list[list[int]]) -> torch.Tensor:
    """(B,) per row, what the attack lowers, averaged over consulted exits and decided positions, each
    rule's own confidence: max_prob (free, distill) each exit's max softmax probability; entropy
    (deebert) minus each exit's entropy; patience (pabee) minus each exit's entropy too, a proxy: PABEE
    reads argmax agreement, which has no gradient, and flat exits' argmaxes wander, so consecutive
    exits disagree more often and reset its counter; cosine (mue) the cosine of consecutive hidden
    states. `answers`: each row's continuation (token ids through EOS). Differentiable in `pv` (B, C, H, W)."""
    bb, rule = method.backbone, method.rule
    width = max(len(a) for a in answers)
    target = torch.full((len(answers), width), bb.tokenizer.pad_token_id, dtype=torch.long)  # (B, Tt)
    tmask = torch.zeros_like(target)
    for i, a in enumerate(answers):
        target[i, : len(a)], tmask[i, : len(a)] = torch.tensor(a), 1
    target, tmask = target.to(bb.device), tmask.to(bb.device)
    embeds, pmask = runner.prefix(bb, pv, prompts["input_ids"], prompts["attention_mask"])  # (B, P, D), (B, P)
    encoder = None
    if bb.lm_type == "opt":
        mask = torch.cat([pmask, tmask], dim=1)  # (B, T)
        out = bb.decoder(inputs_embeds=torch.cat([embeds, bb.embed_tokens(target)], dim=1), attention_mask=mask,
                         output_hidden_states=True, use_cache=False, return_dict=True)  # fmt: skip
        states, decided = out.hidden_states, slice(embeds.shape[1] - 1, mask.shape[1] - 1)
    else:
        out = bb.language_model(inputs_embeds=embeds, attention_mask=pmask, decoder_attention_mask=tmask,
                                decoder_input_ids=bb.language_model._shift_right(target), use_cache=False,
                                output_hidden_states=True, return_dict=True)  # fmt: skip
        states, decided, mask = out.decoder_hidden_states, slice(0, width), tmask
        encoder = Encoded(out.encoder_last_hidden_state, pmask)
    weight = torch.zeros(mask.shape, device=mask.device)  # (B, T) 1 where a token is decided
    weight[:, decided] = tmask.float()
    scores = []  # per exit (B, T); HF's last entry is post-final-norm, but no consulted exit reads it
    for k in consulted(method):
        if rule == "cosine":
            scores.append(rules.cosine(states[k - 1], states[k]))
            continue
        logits = method.head_logits(k, method.exit_hidden(k, states[k], mask, encoder))[None]  # (1, B, T, V)
        scores.append(rules.max_prob(logits)[0] if rule == "max_prob" else -rules.entropy(logits)[0])
    score = torch.stack(scores).float()  # (E, B, T)
    return (score * weight).sum((0, 2)) / (weight.sum(1) * len(scores))


def clean_answers(backbone: Backbone, pv: torch.Tensor, prompts: dict) -> list[list[int]]:
    """The full model's greedy answers (through EOS): the continuation the objective is read on."""
    res = generate(backbone, pixel_values=pv, **prompts, max_new_tokens=MAX_NEW["vqa"])
    return [until_eos(t.tolist(), backbone.tokenizer.eos_token_id) for t in res.tokens]


def _image_space(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std that map the processor's pixel values back to [0, 1] images."""
    ip = backbone.processor.image_processor
    mean, std = (ip.image_mean, ip.image_std) if ip.do_normalize else ([0.0], [1.0])
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=backbone.device).view(1, -1, 1, 1)  # noqa: E731
    return as_t(mean), as_t(std)


def _start(shape: torch.Size, settings: AttackSettings, rows: range) -> torch.Tensor:
    """(B, C, H, W) uniform in [-eps, eps], row r drawn from a generator seeded by (seed, r)."""
    out = []
    for r in rows:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([settings.seed, r]).generate_state(1)[0]))
        out.append(torch.empty(shape[1:]).uniform_(-settings.eps, settings.eps, generator=g))
    return torch.stack(out)


def attack_pixels(method: ExitMethod, pv: torch.Tensor, prompts: dict, answers: list[list[int]],
                  settings: AttackSettings, rows: range) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """PGD on `pv` (B, C, H, W): x = pv * std + mean, x -= step_size * sign(grad of `exit_objective`),
    projected onto the eps-ball around the clean image and [0, 1]. `rows`: the rows' indices (their
    seeds). Returns the attacked pixel values (B, C, H, W) and each row's L-inf perturbation (B,), of the
    float32 image the steps built: casting to a bf16/fp16 backbone's dtype rounds it as it rounds the
    clean pixels."""
    bb = method.backbone
    method.eval()
    bb.model.eval().requires_grad_(False)
    mean, std = _image_space(bb)
    clean = pv.float() * std + mean  # (B, C, H, W)
    if clean.min() < -1e-3 or clean.max() > 1 + 1e-3:
        raise FreeBenchError(f"{bb.spec}: undoing its processor's normalisation gives pixels outside [0, 1] "
                             f"({clean.min():.3f}..{clean.max():.3f}); the budget eps is defined on [0, 1] images")  # fmt: skip
    lo, hi = (clean - settings.eps).clamp(min=0), (clean + settings.eps).clamp(max=1)
    project = lambda x: torch.maximum(torch.minimum(x, hi), lo)  # noqa: E731 (hi first: lo wins if empty)
    x = project(clean + _start(pv.shape, settings, rows).to(clean.device))
    for _ in range(settings.steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            objective = exit_objective(method, ((x - mean) / std).to(pv.dtype), prompts, answers)  # (B,)
            (grad,) = torch.autograd.grad(objective.sum(), x)  # rows are independent: one backward
        x = project(x.detach() - settings.step_size * grad.sign())
    linf = (x - clean).flatten(1).abs().amax(1)  # (B,)
    if not bool((linf <= settings.eps + 1e-6).all()):
        raise AssertionError(f"perturbation {float(linf.max())} exceeds eps {settings.eps}")
    return ((x - mean) / std).to(pv.dtype), linf


def vqa_rows(split: datasets.Dataset, max_rows: int | None) -> datasets.Dataset:
    """The split's questions with answers, first `max_rows` of them."""
    rows = split.filter(bool, input_columns="question", keep_in_memory=True)
    rows = rows.filter(bool, input_columns="answers", keep_in_memory=True)
    rows = rows.select(range(min(len(rows), max_rows or len(rows))))
    if len(rows) == 0:
        raise FreeBenchError("the attack needs VQA rows with answers; this split has none")
    return rows


def _decode_pair(method: ExitMethod, pv: torch.Tensor, prompts: dict, threshold: float, warm: bool) -> tuple:
    """The full model, then the early-exit decode, each timed once on the same batch (`warm`: each
    run once untimed first). Returns (full result, early-exit result, {"full", "early": Timing})."""
    bb, last = method.backbone, {}
    runs = {"full": lambda: last.update(full=generate(bb, pixel_values=pv, **prompts, max_new_tokens=MAX_NEW["vqa"])),
            "early": lambda: last.update(early=generate(bb, method, pixel_values=pv, **prompts, threshold=threshold,
                                                        max_new_tokens=MAX_NEW["vqa"], engine="eager"))}  # fmt: skip
    for fn in runs.values() if warm else ():
        fn()
    ms = {name: time_region(fn, warmup=0, repeats=1, device=bb.device, dtype=bb.dtype, batch_size=len(pv))
          for name, fn in runs.items()}  # fmt: skip
    return last["full"], last["early"], ms


def measure(method: ExitMethod, rows: datasets.Dataset, settings: AttackSettings, threshold: float,
            batch_size: int) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Attack every batch, then decode it clean and attacked, the full model timed right before the
    early-exit decode on the same pixels (as sweeps interleave them); the first batch is decoded once
    untimed first (allocator, kernels). Returns (one row per condition, one row per sample and condition)."""
    bb, nan = method.backbone, float("nan")
    early = {c: S.Outputs() for c in CONDITIONS}
    full_texts: dict[str, list[str]] = {c: [] for c in CONDITIONS}
    linf: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    for index, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows.select(range(start, min(start + batch_size, len(rows))))
        pv, prompts = pixel_values(bb, chunk["image"]), prompt_batch(bb, S.prompts_for(bb, chunk, "vqa"))
        adv, norms = attack_pixels(method, pv, prompts, clean_answers(bb, pv, prompts), settings,
                                   range(start, start + len(chunk)))  # fmt: skip
        linf["clean"] += [0.0] * len(chunk)
        linf["attacked"] += norms.tolist()
        for condition, images in zip(CONDITIONS, (pv, adv), strict=True):
            full, res, ms = _decode_pair(method, images, prompts, threshold, warm=index == 0 and condition == "clean")
            early[condition].timer = ms["early"].timer
            early[condition].add(res, index, ms["early"].median_ms, {"engine_ms": ms["full"].median_ms, "hf_ms": nan,
                                                                    "prefix_ms": nan})  # fmt: skip
            full_texts[condition] += full.text
    summary, samples = [], []
    for condition in CONDITIONS:
        out = early[condition]
        acc, values = S.quality("vqa", rows, out.texts)
        full_acc, full_values = S.quality("vqa", rows, full_texts[condition])
        full_ms, early_ms = sum(out.rows["engine_ms"]), sum(out.rows["latency_ms"])
        summary.append({"condition": condition, "n_samples": len(rows), "timer": out.timer,
                        "accuracy": acc["vqa_accuracy"], "full_accuracy": full_acc["vqa_accuracy"],
                        **{k: out.summary()[k] for k in ("mean_exit_layer", "expected_speedup")},
                        "measured_speedup": full_ms / early_ms if early_ms else nan,
                        "linf_max": max(linf[condition])})  # fmt: skip
        samples.append(pd.DataFrame({
            "sample_id": S.sample_ids("vqa", rows), "condition": condition, "batch": out.rows["batch"],
            **{k: out.rows[k] for k in ("exit_layer_mean", "cost_layers", "full_cost_layers", "latency_ms")},
            "full_latency_ms": out.rows["engine_ms"], "value": values, "full_value": full_values,
            "prediction": out.texts, "full_prediction": full_texts[condition], "linf": linf[condition],
        }))  # fmt: skip
    table = pd.DataFrame(summary)
    clean = float(table["expected_speedup"].iloc[0])
    table["speedup_taken"] = [speedup_taken(clean, float(e)) for e in table["expected_speedup"]]
    return table, pd.concat(samples, ignore_index=True)


def attack_run(exits: Path, out: Path, *, method: str, split: str = "test", max_rows: int | None = None,
               eps: float = 8 / 255, steps: int = 10, step_size: float | None = None, threshold: float | None = None,
               seed: int = 0, batch_size: int = 8, data: Path | None = None, device: str | None = None,
               overwrite: bool = False) -> Path:  # fmt: skip
    """Attack the trained exits in `exits` on `split`'s VQA rows (first `max_rows`) and write
    attack.parquet (per condition), attack_samples.parquet and manifest.json into `out`, all at once.

    `step_size` default 2.5 * eps / steps (Madry et al.). `threshold` default: the middle of the rule's
    sweep grid (`default_threshold`). Static (no confidence) and oracle (no rule) are refused. Every
    check runs before any work; an existing `out` is replaced only with `overwrite`, and only if it
    holds an attack run."""
    from free_bench.evaluation.sweep import exits_fingerprint
    from free_bench.evaluation.trained import data_ref, open_exits, run_data, run_record

    settings = AttackSettings(eps, steps, 2.5 * eps / max(steps, 1) if step_size is None else step_size, seed)
    if batch_size < 1 or (max_rows is not None and max_rows < 1):
        raise FreeBenchError(f"batch size and max rows must be >= 1, got {batch_size}, {max_rows}")
    rule = get_method(method).rule
    if rule in ("static", "oracle"):
        raise FreeBenchError(f"--method {method}: the {rule} rule reads no confidence, so there is nothing to attack; "
                             "attack a confidence rule (free, distill, deebert, pabee, mue)")  # fmt: skip
    exits, out = Path(exits), Path(out)
    record = run_record(exits)
    trained = record["exits"].get("method")
    if trained != method:
        raise FreeBenchError(f"--method {method} but {exits} holds {trained} exits; pass --method {trained}")
    check_writable(out)
    if out.exists() and any(out.iterdir()):
        made = read_json(out / "manifest.json").get("command") if (out / "manifest.json").is_file() else None
        if not overwrite or made != "attack":
            raise FreeBenchError(f"{out} is not empty; choose another --out"
                                 + (" or pass --overwrite" if made == "attack" else " (it holds no attack run)"))  # fmt: skip
    source = run_data(record, data, progress=False)
    rows = vqa_rows(source.split(split, need="the attack"), max_rows)
    exit_method = open_exits(exits, device=device, record=record).eval()
    exit_method.requires_grad_(False)  # ours alone: the attack differentiates the pixels only
    consulted(exit_method)
    threshold = default_threshold(rule, exit_method.layers) if threshold is None else threshold
    threshold = float(rules.check_threshold(rule, threshold, exit_method.layers))
    config = {"method": method, "exits": str(exits.resolve()), "exits_fingerprint": exits_fingerprint(exits),
              "split": split, "max_rows": max_rows, "threshold": threshold, "batch_size": batch_size,
              **asdict(settings), "data": data_ref(record, data), "backbone": exit_method.backbone.spec,
              "prompts": exit_method.backbone.prompts, "objective": rule}  # fmt: skip
    manifest = Manifest("attack", config, seeds=[seed], dataset_hash=source.hash)
    regime = record.get("regime", "none")
    with writer_lock(out):
        table, samples = measure(exit_method, rows, settings, threshold, batch_size)
        tag = {"method": method, "regime": regime, "threshold": threshold, **asdict(settings)}
        table = table.assign(**tag)
        with atomic_dir(out) as tmp:
            write_parquet(table, tmp / "attack.parquet")
            write_parquet(samples.assign(**tag), tmp / "attack_samples.parquet")
            manifest.update(timer=str(table["timer"].iloc[0]), n_samples=len(rows))
            manifest.write(tmp / "manifest.json")
    log.info("wrote %s", out)
    return out
