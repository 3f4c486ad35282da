"""Pretrain an embedded backbone end to end: data -> two stages -> save_pretrained -> quality report."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from free_bench.backbone import embedded
from free_bench.backbone.pretrain import prepare, train
from free_bench.backbone.tokenizer import build_processor
from free_bench.config import get_profile
from free_bench.data.scenes import GENERATOR_VERSION
from free_bench.data.scenes_dataset import load_scenes, scenes_hash
from free_bench.errors import FreeBenchError
from free_bench.records import Manifest, write_json

STATE_DIR = "_pretrain_state"  # checkpoints for resuming; removed once the weights are written


def recipe(profile: str, lm_type: str, overrides: dict | None = None) -> dict:
    """Everything that decides the weights (besides the seed), as recorded in the manifest."""
    prof = get_profile(profile)
    cfg = replace(prof.pretrain, **(overrides or {}))
    return json.loads(
        json.dumps(
            {
                "profile": profile,
                "lm_type": lm_type,
                "scenes_generator": GENERATOR_VERSION,
                "scenes": asdict(prof.scenes),
                "backbone": asdict(prof.backbone),
                "pretrain": asdict(cfg),
            }
        )
    )


def check_current(folder: Path, profile: str, lm_type: str) -> None:
    """A cached backbone made by another recipe (older code or config) is an error, never reused silently."""
    made = json.loads((folder / "manifest.json").read_text()).get("config", {})
    want = recipe(profile, lm_type)
    differ = sorted(k for k in want if made.get(k) != want[k])
    if differ:
        raise FreeBenchError(
            f"{folder} was pretrained with another recipe (differs in: {', '.join(differ)}); "
            f"remove it or rerun `free-bench pretrain --profile {profile}{' --lm t5' if lm_type == 't5' else ''}`"
        )


def pretrain(
    profile: str,
    lm_type: str,
    out: Path,
    *,
    seed: int = 0,
    device: str | None = None,
    overrides: dict | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Train (or resume) and write `out/` (safetensors weights, processor, manifest, quality.json)."""
    prof = get_profile(profile)
    cfg = replace(prof.pretrain, **(overrides or {}))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ds = load_scenes(profile, prof.seed, progress=progress)
    processor = build_processor(prof.scenes.image_size, prof.backbone.num_query_tokens)
    manifest = Manifest(
        "pretrain",
        recipe(profile, lm_type, overrides),
        seeds=[seed],
        dataset_hash=scenes_hash(profile, prof.seed),
    )
    torch.manual_seed(seed)
    model = embedded.build_model(profile, lm_type, seed).to(device)
    grid = prof.scenes.grid if cfg.vision_steps or cfg.query_cell_weight else None
    data = prepare(ds["train"], processor.tokenizer, grid)
    data.pixels = data.pixels.to(device)  # uint8, small enough to live on the device
    state = out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    log = train(model, processor.tokenizer, data, cfg, lm_type, state, seed=seed, progress=progress)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    summary = {"loss_curves": log["loss"], "train_seconds": log["seconds"], "torch_device": str(device)}
    if evaluate:
        from free_bench.backbone.load import load_backbone
        from free_bench.backbone.quality import evaluate_quality

        backbone = load_backbone(str(tmp), device=device)
        summary["quality"] = evaluate_quality(backbone, ds, max_rows=cfg.eval_max_rows, progress=progress)
        write_json(summary["quality"], tmp / "quality.json")
    manifest.update(**summary)
    manifest.write(tmp / "manifest.json")
    for f in tmp.iterdir():  # keep the resume state beside the final files until they are in place
        target = out / f.name
        if target.is_dir():
            shutil.rmtree(target)
        f.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    return summary
