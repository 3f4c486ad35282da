"""Pretrain an embedded backbone end to end: data -> two stages -> save_pretrained -> quality report."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from free_bench.config import get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest, read_json, write_json
from free_bench.core.runs import check_same, check_writable, remove_run, writer_lock
from free_bench.data.scenes_dataset import load_scenes, scenes_hash
from free_bench.models import embedded
from free_bench.models.embedded_cache import recipe
from free_bench.models.prompts import EMBEDDED, write_prompts
from free_bench.models.tokenizer import build_processor
from free_bench.training.pretrain.stages import prepare, train

log = logging.getLogger(__name__)
STATE_DIR = "_pretrain_state"  # checkpoints for resuming; removed once the weights are written


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
    provenance = {"config": manifest.data["config"], "seeds": [seed], "dataset_hash": manifest.data["dataset_hash"]}
    if (state / "provenance.json").is_file():  # resume only what these settings started
        check_same("a resumable pretraining", state, read_json(state / "provenance.json"), provenance)
    elif state.exists():
        raise FreeBenchError(f"{state} holds a pretraining state that records no settings; remove it to start afresh")
    state.mkdir(parents=True, exist_ok=True)
    write_json(provenance, state / "provenance.json")
    log = train(model, processor.tokenizer, data, cfg, lm_type, state, seed=seed, progress=progress)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    write_prompts(EMBEDDED, tmp)  # loaded by path too (the evaluation below), it is asked as it was trained
    summary = {"loss_curves": log["loss"], "train_seconds": log["seconds"], "torch_device": str(device)}
    if evaluate:
        from free_bench.evaluation.quality import evaluate_quality
        from free_bench.models.load import load_backbone

        backbone = load_backbone(str(tmp), device=device)
        summary["quality"] = evaluate_quality(backbone, ds, max_rows=cfg.eval_max_rows, progress=progress)
        write_json(summary["quality"], tmp / "quality.json")
    manifest.update(**summary)
    manifest.write(tmp / "manifest.json")
    # keep the resume state beside the final files until they are in place; the manifest goes last,
    # so a folder with a manifest is always complete
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "manifest.json"):
        target = out / f.name
        if target.is_dir():
            shutil.rmtree(target)
        f.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    return summary


def pretrain_into(out: Path, profile: str, lm_type: str, *, seed: int = 0, device: str | None = None,
                  overrides: dict | None = None, evaluate: bool = True, overwrite: bool = False) -> dict | None:  # fmt: skip
    """`pretrain` into `out` as a run folder: None when `out` already holds a backbone made with these
    settings (reused); one made with others is an error naming the fields unless `overwrite`. One
    writer at a time; a folder that is not a pretrained backbone is never touched."""
    out = Path(out)
    check_writable(out)
    wanted = {"config": recipe(profile, lm_type, overrides), "seeds": [seed]}
    with writer_lock(out):
        if (out / "manifest.json").is_file():
            made = read_json(out / "manifest.json")
            if not overwrite:
                check_same("a pretrained backbone", out, {k: made.get(k) for k in wanted}, wanted)
                log.info("%s is already pretrained in %s with these settings: reused", profile, out)
                return None
            remove_run(out, "manifest.json")
        elif out.exists() and any(f.name != STATE_DIR for f in out.iterdir()):
            raise FreeBenchError(f"{out} exists and holds no pretrained backbone; choose another --out")
        summary = pretrain(profile, lm_type, out, seed=seed, device=device, overrides=overrides, evaluate=evaluate)
    log.info("wrote %s", out)
    return summary
