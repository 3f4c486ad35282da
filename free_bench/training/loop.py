"""The exit-training loop: alternating D and G steps for adversarial methods, gradient clipping,
checkpoints with bit-identical resume on CPU, and a guard that catches a GAN going wrong.

Guard: a non-finite loss, or a discriminator whose accuracy sits at 0 or 1 for `collapse_steps`
steps in a row, rolls training back once to the last good checkpoint with the learning rates
scaled by `rollback_lr_factor`; a second detection stops with GanCollapse (a clear message).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from free_bench.config import ExitTrainConfig
from free_bench.core.errors import FreeBenchError
from free_bench.core.interrupt import StopRequest, deferred_stop
from free_bench.core.records import atomic_path
from free_bench.methods.protocol import ExitMethod
from free_bench.training.batches import TFBatch
from free_bench.training.distributed import SINGLE, Dist, average_gradients, average_scalars, barrier


class GanCollapse(FreeBenchError):
    """The guard fired twice: NaN/inf losses or a collapsed discriminator survived a rollback."""


def train_exits(
    method: ExitMethod,
    batches: Sequence[TFBatch],
    cfg: ExitTrainConfig,
    regime: str,
    state_dir: Path,
    seed: int = 0,
    progress: bool = True,
    dist: Dist = SINGLE,
) -> dict:
    """Train (or resume) `method`'s exits on precomputed batches; returns the loss log.

    With `dist` (several ranks), gradients and logged values are averaged across ranks and only
    rank 0 writes checkpoints."""
    if not method.trainable:
        raise FreeBenchError(f"method {method.name!r} has nothing to train")
    # one process: a time limit or Ctrl-C ends the step, checkpoints it and leaves (`free_bench.core.interrupt`);
    # several ranks must stop together, so there signals keep their usual effect
    with deferred_stop(enabled=dist.world == 1) as stop:
        return _loop(
            method, batches, cfg, regime, state_dir / "exit_train_state.pt", seed, progress, dist, stop
        )


def _loop(method: ExitMethod, batches: Sequence[TFBatch], cfg: ExitTrainConfig, regime: str, ckpt: Path,
          seed: int, progress: bool, dist: Dist, stop: StopRequest) -> dict:  # fmt: skip
    """The body of `train_exits`, from the checkpoint in `ckpt` if there is one."""
    state = torch.load(ckpt, weights_only=False) if ckpt.exists() else None
    lr_scale = state["lr_scale"] if state else 1.0
    gen_opt, disc_opt = _optimizers(method, cfg, lr_scale)
    log: dict = {"step": [], "seconds": 0.0, "rollbacks": 0}
    start = 0
    if state:
        _restore(state, method, gen_opt, disc_opt)
        log, start = state["log"], state["step"]
        log.setdefault("resumed_at", []).append(start)  # a resumed run's wall clock starts here
    pinned = 0
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"train {method.name}",
        disable=not progress or not dist.main,
        initial=start,
        total=cfg.steps,
    )
    t0 = time.perf_counter()
    step = start
    while step < cfg.steps:
        order = torch.randperm(
            len(batches), generator=torch.Generator().manual_seed(seed * 7919 + step // len(batches))
        )
        b = batches[int(order[step % len(batches)])]
        entry = average_scalars(_step(method, b, regime, cfg, gen_opt, disc_opt, dist), dist)
        bad = not all(math.isfinite(v) for k, v in entry.items() if not k.startswith("disc_acc@"))
        accs = [v for k, v in entry.items() if k.startswith("disc_acc@")]
        pinned = pinned + 1 if accs and any(a in (0.0, 1.0) for a in accs) else 0
        if bad or pinned >= cfg.collapse_steps:
            why = (
                "a non-finite loss"
                if bad
                else f"a discriminator pinned at accuracy 0 or 1 for {pinned} steps"
            )
            if log["rollbacks"] or not ckpt.exists():
                raise GanCollapse(
                    f"{method.name}: {why} at step {step + 1}"
                    + (" after one rollback" if log["rollbacks"] else " before any checkpoint")
                    + "; lower the learning rates or w_adv"
                )
            state = torch.load(ckpt, weights_only=False)
            lr_scale = state["lr_scale"] * cfg.rollback_lr_factor
            gen_opt, disc_opt = _optimizers(method, cfg, lr_scale)
            _restore(state, method, gen_opt, disc_opt)
            _set_lr(cfg, gen_opt, disc_opt, lr_scale)
            step, pinned = state["step"], 0
            log = state["log"]
            log["rollbacks"] = 1
            log.setdefault("events", []).append(f"rolled back at step {step + 1}: {why}; lr x{lr_scale:g}")
            bar.n = step
            continue
        step += 1
        entry["step"] = step
        log["step"].append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
        stopping = bool(stop)  # asked to stop: this step is kept (checkpointed), then the run leaves
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
            log["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if dist.main:
                _save(ckpt, method, gen_opt, disc_opt, step, log, lr_scale)
            barrier(dist)
        if stopping:
            stop.exit()
    bar.close()
    return log


def _disc_params(method: ExitMethod) -> list[torch.nn.Parameter]:
    """The adversary's parameters (FREE's discriminators), trained by their own optimiser; else none."""
    return [] if method.discriminators is None else list(method.discriminators.parameters())


def _optimizers(method: ExitMethod, cfg: ExitTrainConfig, scale: float):
    gen = torch.optim.AdamW(method.exit_parameters(), lr=cfg.lr * scale, weight_decay=cfg.weight_decay)
    disc_params = _disc_params(method)
    disc = torch.optim.AdamW(disc_params, lr=cfg.lr_disc * scale) if disc_params else None
    return gen, disc


def _step(
    method: ExitMethod, b: TFBatch, regime: str, cfg: ExitTrainConfig, gen_opt, disc_opt, dist: Dist
) -> dict:
    entry: dict = {}
    if disc_opt is not None:  # D step first, on detached features
        d = method.discriminator_loss(b.hidden, b.mask, b.loss_mask, b.encoder)
        disc_opt.zero_grad(set_to_none=True)
        d["loss"].backward()
        average_gradients(_disc_params(method), dist)
        torch.nn.utils.clip_grad_norm_(_disc_params(method), cfg.grad_clip)
        disc_opt.step()
        entry["disc"] = float(d["disc"])
        entry.update({k: float(v) for k, v in d.items() if k.startswith("disc_acc@")})
    g = method.losses(b.hidden, b.targets if regime == "semi" else None, b.mask, regime, b.loss_mask, b.encoder)
    gen_opt.zero_grad(set_to_none=True)
    g["loss"].backward()
    average_gradients(method.exit_parameters(), dist)
    torch.nn.utils.clip_grad_norm_(method.exit_parameters(), cfg.grad_clip)
    gen_opt.step()
    entry.update({k: float(v.detach()) for k, v in g.items() if v.dim() == 0})
    return entry


def _restore(state: dict, method, gen_opt, disc_opt) -> None:
    method.load_state_dict(state["method"])
    gen_opt.load_state_dict(state["gen_opt"])
    if disc_opt is not None and state["disc_opt"] is not None:
        disc_opt.load_state_dict(state["disc_opt"])


def _set_lr(cfg: ExitTrainConfig, gen_opt, disc_opt, scale: float) -> None:
    """After a rollback the optimizer moments are kept and the rates drop."""
    for g in gen_opt.param_groups:
        g["lr"] = cfg.lr * scale
    for g in disc_opt.param_groups if disc_opt is not None else []:
        g["lr"] = cfg.lr_disc * scale


def _save(path: Path, method, gen_opt, disc_opt, step: int, log: dict, lr_scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "method": method.state_dict(),
        "gen_opt": gen_opt.state_dict(),
        "disc_opt": disc_opt.state_dict() if disc_opt is not None else None,
        "step": step,
        "log": log,
        "lr_scale": lr_scale,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
