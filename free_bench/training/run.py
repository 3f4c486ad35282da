"""One exit training as a run folder: `train_exit_run` is what `free-bench train-exits` and
`reproduce` call.

The folder `out` is complete or absent: weights, config.json and manifest.json are written into a temp
folder beside it and renamed in one step, so a killed run leaves only its resume state (`out.state`),
never a folder that looks finished. Both the finished folder and the resume state record the run's
provenance; a rerun reuses or resumes only when all of it matches (else `--overwrite`).
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from free_bench.config import TASKS, ExitTrainConfig, get_profile
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import Manifest, read_json, write_json
from free_bench.core.runs import check_same, check_writable, remove_run, writer_lock

log = logging.getLogger(__name__)

REGIME_SPLIT = {"semi": "exit_train", "unsupervised": "unlabeled"}

PROVENANCE = "provenance.json"  # in the resume state: what the checkpoint was made with


def state_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".state")


def check_request(method: str, regime: str, backbone: str, profile: str | None, steps: int | None,
                  tasks: tuple[str, ...], data: str | Path | None = None, batch_size: int | None = None,
                  train_config: dict[str, Any] | None = None) -> ExitTrainConfig:  # fmt: skip
    """Every setting checked before anything is loaded or written; returns the training config:
    `train_config` (ExitTrainConfig fields, as reproduce passes its settings), else the profile's
    (`--profile`, else an embedded backbone's own), else the defaults; then the overrides."""
    from free_bench.methods.registry import available

    check_choice("method", method, available())
    check_choice("regime", regime, list(REGIME_SPLIT))
    for task in tasks:
        check_choice("task", task, TASKS)
    for name, value in (("--steps", steps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise FreeBenchError(f"{name} must be >= 1, got {value}")
    embedded = backbone.startswith("embedded:")
    if data is None and profile is None and not embedded and train_config is None:
        raise FreeBenchError(
            f"backbone {backbone!r} is not embedded: give --data DIR (a folder written by `free-bench data`), "
            "or --profile to train on that profile's scenes"
        )
    if train_config is not None:
        try:
            cfg = ExitTrainConfig(**train_config)
        except TypeError as exc:
            raise FreeBenchError(f"exit training settings: {exc}") from None
    elif profile is not None:
        cfg = get_profile(profile).exits
    elif embedded:
        from free_bench.models.embedded import parse_spec

        cfg = get_profile(parse_spec(backbone)[0]).exits
    else:
        cfg = ExitTrainConfig()
    overrides = {"steps": steps, "batch_size": batch_size}
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def data_source(backbone: str, profile: str | None, data: str | Path | None):
    """The rows to train on: `--data`, else the scenes of `--profile` or of the embedded backbone."""
    from free_bench.data.source import open_folder, open_scenes

    if data is not None:
        return open_folder(data)
    if profile is None:
        from free_bench.models.embedded import parse_spec

        profile = parse_spec(backbone)[0]
    return open_scenes(profile, get_profile(profile).seed)


def train_exit_run(
    out: Path,
    *,
    method: str,
    backbone: str,
    regime: str,
    exits: str | None = None,
    profile: str | None = None,
    split: str | None = None,
    tasks: tuple[str, ...] = TASKS,
    steps: int | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    backbone_seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    data: str | Path | None = None,
    prompts: dict[str, str] | None = None,
    batch_size: int | None = None,
    train_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `method`'s exits on the frozen `backbone` into `out` (resumable); returns the manifest.

    `data`: a folder written by `free-bench data` (default: the scenes of `profile` or of the embedded
    backbone); `prompts` (task -> prompt) override the backbone's. A finished run with the same
    provenance is returned as it is; one with other provenance is an error naming the differing
    fields unless `overwrite`. Under torchrun each rank trains on its shard and the main rank writes."""
    from free_bench.training.distributed import init_from_env, shutdown

    out = Path(out)
    tasks = tuple(tasks)
    cfg = check_request(method, regime, backbone, profile, steps, tasks, data, batch_size, train_config)
    if prompts:
        from free_bench.models.prompts import check_prompts

        check_prompts(prompts, "--prompt")
    check_writable(out)
    source = data_source(backbone, profile, data)  # a bad folder fails before any model loads
    dist, device = init_from_env(device)  # under torchrun: one rank per process, data sharded
    try:  # the main rank writes `out`, so it alone holds the writer lock
        with writer_lock(out) if dist.main else nullcontext():
            return _train(out, cfg, source, dist, device, method=method, backbone=backbone, regime=regime,
                          exits=exits, split=split, tasks=tasks, options=options or {}, seed=seed,
                          backbone_seed=backbone_seed, overwrite=overwrite, prompts=prompts)  # fmt: skip
    finally:
        shutdown(dist)  # every rank leaves the process group: exiting inside it aborts gloo's threads


def _train(out: Path, cfg: ExitTrainConfig, source, dist, device: str | None, *, method: str, backbone: str,
           regime: str, exits: str | None, split: str | None, tasks: tuple[str, ...], options: dict[str, Any],
           seed: int, backbone_seed: int, overwrite: bool, prompts: dict[str, str] | None) -> dict[str, Any]:  # fmt: skip
    import torch

    from free_bench.methods import parse_placement
    from free_bench.methods.registry import build_method
    from free_bench.methods.storage import backbone_identity
    from free_bench.models import load_backbone
    from free_bench.training import teacher_forced_batches, train_exits
    from free_bench.training.distributed import barrier

    split_name = split or REGIME_SPLIT[regime]
    rows = source.split(split_name, need=f"{regime} exit training")
    torch.manual_seed(seed)  # the same exit initialisation on every rank
    bb = load_backbone(backbone, device=device, seed=backbone_seed, prompts=prompts)
    layers = parse_placement(exits or cfg.dense, bb.num_layers)
    exit_method = build_method(method, bb, layers, **options)  # validates the options
    train = {k: v for k, v in asdict(cfg).items() if k != "keep_mib"}  # keep_mib changes no result
    provenance = {
        "config": {"method": method, "regime": regime, "backbone": backbone_identity(bb), "layers": list(layers),
                   "options": exit_method.options, "split": split_name, "processes": dist.world,
                   "tasks": list(tasks), "train": train, "data": source.ref, "prompts": bb.prompts},
        "seeds": [seed],
        "dataset_hash": source.hash,
    }  # fmt: skip
    done = out / "manifest.json"
    if done.is_file():
        recorded = read_json(done)
        if not overwrite:
            check_same("trained exits", out, {k: recorded.get(k) for k in provenance}, provenance)
            log.info("exits already trained in %s with these settings: reused", out)
            return recorded
        if dist.main:
            remove_run(out, "manifest.json")
    elif out.exists() and any(out.iterdir()):
        raise FreeBenchError(f"{out} exists and holds no finished train-exits run; choose another --out")
    state = state_path(out)
    resume = _check_state(state, provenance, overwrite)
    manifest = Manifest("train-exits", provenance["config"], seeds=[seed], dataset_hash=provenance["dataset_hash"])
    train_log: dict = {"step": [], "seconds": 0.0}
    t0 = time.perf_counter()
    passes = None
    if exit_method.trainable:
        batches = teacher_forced_batches(
            bb, rows, regime, cfg.batch_size, cfg.max_rows, tasks, dist=dist, keep_mib=cfg.keep_mib
        )
        if dist.main:  # the batches checked the split: only now is anything written
            _open_state(state, provenance, resume, overwrite)
        train_log = train_exits(exit_method, batches, cfg, regime, state, seed=seed, dist=dist)
        passes = {"batches": len(batches), "teacher_forced_passes": batches.passes,
                  "streamed": batches.streamed, "batch_hidden_mib": round(batches.batch_mib, 2)}  # fmt: skip
    if not dist.main:
        barrier(dist)
        return provenance
    manifest.update(
        loss_log=train_log["step"],
        train_seconds=train_log["seconds"],
        wall_seconds=time.perf_counter() - t0,  # this process's: from its resume, if it resumed
        resumed_at_steps=train_log.get("resumed_at", []),
        events=train_log.get("events", []),
        hidden_states=passes,
    )
    from free_bench.methods.storage import save_method

    # weights, config.json and manifest.json appear together: a killed run never looks finished
    save_method(exit_method, out, manifest)
    shutil.rmtree(state, ignore_errors=True)
    barrier(dist)
    last = train_log["step"][-1] if train_log["step"] else {}
    log.info("%s (%s) at layers %s: %.1f s of training, last step %s; wrote %s", method, regime,
             list(layers), train_log["seconds"], last, out)  # fmt: skip
    return manifest.data


def _check_state(state: Path, provenance: dict, overwrite: bool) -> bool:
    """True when a leftover resume state was made with these settings (resume it); an error when it
    was made with others, unless `overwrite` (then it is replaced once training starts)."""
    record = state / PROVENANCE
    if not state.exists() or overwrite:
        return False
    if not record.is_file():
        raise FreeBenchError(
            f"{state} holds a resume state that records no settings; pass --overwrite to start afresh"
        )
    check_same("a resumable exit training", state, read_json(record), provenance)
    log.info("resuming the exit training in %s", state)
    return True


def _open_state(state: Path, provenance: dict, resume: bool, overwrite: bool) -> None:
    """The resume state's folder with its settings recorded (an old one removed under --overwrite)."""
    if resume:
        return
    if state.exists() and overwrite:
        remove_run(state, PROVENANCE if (state / PROVENANCE).is_file() else "exit_train_state.pt")
    state.mkdir(parents=True, exist_ok=True)
    write_json(provenance, state / PROVENANCE)
