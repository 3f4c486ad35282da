"""`free-bench train-exits`: train one exit method on a frozen backbone; save exits + manifest."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from free_bench.cli import command
from free_bench.errors import FreeBenchError, check_choice

REGIME_SPLIT = {"semi": "exit_train", "unsupervised": "unlabeled"}


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="an exit method (see free_bench.methods.available())")
    p.add_argument("--backbone", required=True, help="embedded:<profile>, an HF id or a local BLIP-2 folder")
    p.add_argument("--regime", required=True, help="semi (labelled exit_train) or unsupervised (no labels)")
    p.add_argument("--out", type=Path, required=True, help="folder for the exits, config.json and manifest")
    p.add_argument("--exits", default=None, help="placement: '4,8,12', 'every:k' or 'all' (default: dense)")
    p.add_argument("--profile", default=None, help="scenes profile of the data (default: the backbone's)")
    p.add_argument("--split", default=None, help="training split (default: exit_train / unlabeled)")
    p.add_argument(
        "--tasks", nargs="+", default=["vqa", "caption"], help="vqa and/or caption (default: both)"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the profile's)")
    p.add_argument("--patience", type=int, default=None, help="PABEE patience (>= 1)")
    p.add_argument("--temperature", type=float, default=None, help="distillation temperature (> 0)")
    p.add_argument("--w-adv", type=float, default=None, help="FREE: weight of the adversarial term")
    p.add_argument("--seed", type=int, default=0, help="seed of the exits' initialisation and data order")
    p.add_argument(
        "--backbone-seed", type=int, default=0, help="which pretraining of an embedded backbone (default 0)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def _options(args: argparse.Namespace) -> dict:
    opts = {"patience": args.patience, "temperature": args.temperature, "w_adv": args.w_adv}
    return {k: v for k, v in opts.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from free_bench.backbone.embedded import parse_spec
    from free_bench.config import get_profile
    from free_bench.methods.registry import available
    from free_bench.training.distributed import init_from_env, shutdown

    check_choice("method", args.method, available())
    check_choice("regime", args.regime, list(REGIME_SPLIT))
    if args.steps is not None and args.steps < 1:
        raise FreeBenchError(f"--steps must be >= 1, got {args.steps}")
    if args.profile is None and not args.backbone.startswith("embedded:"):
        raise FreeBenchError("--profile is needed to pick the scenes data for a non-embedded backbone")
    profile = get_profile(args.profile or parse_spec(args.backbone)[0])
    cfg = profile.exits if args.steps is None else replace(profile.exits, steps=args.steps)
    if (args.out / "config.json").exists():
        print(f"exits already trained in {args.out} (delete it to retrain)")
        return 0
    dist, device = init_from_env(args.device)  # under torchrun: one rank per process, data sharded
    try:
        return _train(args, profile, cfg, dist, device)
    finally:
        shutdown(dist)  # every rank leaves the process group: exiting inside it aborts gloo's threads


def _train(args: argparse.Namespace, profile, cfg, dist, device: str | None) -> int:
    """One rank's training and, on the main rank, the saved exits and manifest."""
    import torch

    from free_bench.backbone import load_backbone
    from free_bench.data.scenes_dataset import load_scenes, scenes_hash
    from free_bench.methods.base import parse_placement
    from free_bench.methods.registry import get_method
    from free_bench.records import Manifest
    from free_bench.training import teacher_forced_batches, train_exits
    from free_bench.training.distributed import barrier

    torch.manual_seed(args.seed)  # the same exit initialisation on every rank
    backbone = load_backbone(args.backbone, device=device, seed=args.backbone_seed)
    layers = parse_placement(args.exits or cfg.dense, backbone.num_layers)
    method = get_method(args.method)(backbone, layers, **_options(args))  # validates the options
    split_name = args.split or REGIME_SPLIT[args.regime]
    ds = load_scenes(profile.name, profile.seed)
    if split_name not in ds:
        raise FreeBenchError(f"unknown split {split_name!r}; valid: {', '.join(ds)}")
    manifest = Manifest(
        "train-exits",
        {
            "method": args.method,
            "regime": args.regime,
            "backbone": backbone.spec,
            "layers": list(layers),
            "options": method.options,
            "split": split_name,
            "processes": dist.world,
            "tasks": list(args.tasks),
            "train": asdict(cfg),
        },
        seeds=[args.seed],
        dataset_hash=scenes_hash(profile.name, profile.seed),
    )
    state = args.out.with_name(args.out.name + ".state")
    log: dict = {"step": [], "seconds": 0.0}
    t0 = time.perf_counter()
    if method.trainable:
        batches = teacher_forced_batches(
            backbone, ds[split_name], args.regime, cfg.batch_size, cfg.max_rows, tuple(args.tasks), dist=dist
        )
        log = train_exits(method, batches, cfg, args.regime, state, seed=args.seed, dist=dist)
    if not dist.main:
        barrier(dist)
        return 0
    method.save(args.out)
    manifest.update(
        loss_log=log["step"],
        train_seconds=log["seconds"],
        wall_seconds=time.perf_counter() - t0,  # this process's: from its resume, if it resumed
        resumed_at_steps=log.get("resumed_at", []),
        events=log.get("events", []),
    )
    manifest.write(args.out / "manifest.json")
    shutil.rmtree(state, ignore_errors=True)
    barrier(dist)
    last = log["step"][-1] if log["step"] else {}
    print(
        json.dumps(
            {
                "method": args.method,
                "regime": args.regime,
                "layers": list(layers),
                "train_seconds": round(log["seconds"], 1),
                "final": last,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


command(
    "train-exits",
    "Train an exit method's exits on a frozen backbone (checkpointed, resumable).",
    "free-bench train-exits --method free --backbone embedded:cpu --regime semi --out runs/free-semi",
    _add_args,
    run,
)
