"""`reproduce`: data -> backbone -> exits -> sweeps -> robustness -> guarantees -> report, into results/<profile>/,
reusing finished stages.

Stages are functions `(ctx) -> dict` run in `STAGES` order; each writes its outputs atomically and a
done-marker into the cache, so a killed run resumes at the first unfinished stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from free_bench.config import cache_dir, get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest, atomic_path, write_json
from free_bench.pipeline import guarantees, stages
from free_bench.pipeline.context import Context

log = logging.getLogger(__name__)


def data_stage(ctx: Context) -> dict:
    """The rows: a `free-bench data` folder, or the profile's scenes (generated or reused from the
    cache); their counts to results/. A folder lacking a split or task the run needs fails here."""
    from free_bench.data.scenes_dataset import count_table
    from free_bench.data.source import open_folder, open_scenes

    source = open_folder(ctx.data) if ctx.data else open_scenes(ctx.scenes, ctx.seed)
    cfg = ctx.settings.reproduce
    needed = {"exit_train" if r.endswith(":semi") else "unlabeled" for r in cfg.runs} | {"val", "test"}
    missing = sorted(needed - set(source.splits))
    if missing:
        raise FreeBenchError(
            f"{source.name} lacks the split(s) {missing} this run needs (exit training, val operating points, "
            "test); write them with `free-bench data --splits ... --fractions ...`, or change reproduce.runs"
        )
    if "caption" in cfg.tasks and not any(source.splits["test"].select(range(min(50, len(source.splits["test"]))))["captions"]):
        raise FreeBenchError(f"{source.name} has no captions: set reproduce.tasks to [vqa] in the config file")
    table = count_table(source.splits)
    with atomic_path(ctx.results / "data_counts.csv") as tmp:
        table.to_csv(tmp)
    return {"dataset_hash": source.hash, "data": source.ref, "rows": {s: len(d) for s, d in source.splits.items()}}


def backbone_stage(ctx: Context) -> dict:
    """An embedded backbone: pretrained (or reused), its manifest and quality report copied to
    results/. A user's checkpoint: loaded once to check it and record what it is (nothing trained)."""
    if not ctx.embedded:
        from free_bench.methods.storage import backbone_identity
        from free_bench.models import load_backbone

        bb = load_backbone(ctx.backbone)  # the run's device: a 3.7 B-parameter model is 15 GB in fp32
        record = {"backbone": bb.spec, "identity": backbone_identity(bb), "prompts": bb.prompts,
                  "num_layers": bb.num_layers, "lm_type": bb.lm_type}  # fmt: skip
        write_json(record, ctx.results / "backbone" / "manifest.json")
        return record
    from free_bench.models.embedded_cache import check_current, embedded_dir
    from free_bench.pipeline.backbone import pretrain_into

    spec = ctx.backbone
    profile = spec.split(":", 1)[1]
    folder = embedded_dir(spec, ctx.seed)
    if not (folder / "manifest.json").exists():
        pretrain_into(folder, profile, "opt", seed=ctx.seed)
    check_current(folder, profile, "opt")
    out = ctx.results / "backbone"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "quality.json"):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes((folder / name).read_bytes())
    quality = json.loads((folder / "quality.json").read_text())
    return {"backbone": spec, "vqa_accuracy": quality["vqa_accuracy"], "folder": str(folder)}


STAGES: list[tuple[str, Callable[[Context], dict]]] = [
    ("data", data_stage),
    ("backbone", backbone_stage),
    ("exits", stages.exits_stage),
    ("sweeps", stages.sweeps_stage),
    ("robustness", stages.robustness_stage),
    ("guarantees", guarantees.guarantees_stage),
    ("report", stages.report_stage),
]


def _write_manifest(manifest: Manifest, spent: dict[str, float], ctx: Context) -> None:
    manifest.update(stage_seconds=spent, total_seconds=round(sum(spent.values()), 1),
                    dataset_hash=manifest.data.get("data", {}).get("dataset_hash"))  # fmt: skip
    manifest.write(ctx.results / "manifest.json")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def default_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def context(profile: str, seed: int = 0, results: Path = Path("results"), *, backbone: str | None = None,
            data: str | Path | None = None, config: str | Path | None = None) -> Context:  # fmt: skip
    """The run: `profile`'s settings, or a config file's (a profile with changes, `pipeline.settings`),
    on `backbone` (default: the profile's embedded one) and `data` (default: the profile's scenes)."""
    if config is not None:
        from free_bench.pipeline.settings import load_settings

        settings = load_settings(config)
    else:
        settings = get_profile(profile)
    backbone = backbone or f"embedded:{settings.extras.get('base', settings.name)}"
    if backbone.startswith("embedded:"):
        from free_bench.models.embedded import parse_spec

        name, lm = parse_spec(backbone)
        if lm != "opt":
            raise FreeBenchError(f"reproduce pretrains OPT embedded backbones; {backbone} is not one")
    elif data is None:
        raise FreeBenchError(f"backbone {backbone!r} is not embedded: give --data DIR (a `free-bench data` folder)")
    folder = None if data is None else str(Path(data).expanduser().resolve())
    return Context(settings.name, seed, results / settings.name, cache_dir() / "reproduce" / settings.name,
                   settings, backbone, folder)  # fmt: skip


def clear(ctx: Context) -> None:
    """Remove what reproduce made in the cache for this run and seed: its stage markers and work
    folders and, for an embedded backbone, the backbone and the generated dataset (all of it written
    by reproduce). A user's checkpoint and data folder are never touched."""
    from free_bench.data.scenes_dataset import cache_key
    from free_bench.models.embedded_cache import embedded_dir

    folders = [ctx.cache]
    if ctx.embedded:
        folders.append(embedded_dir(ctx.backbone, ctx.seed))
    if ctx.embedded and ctx.data is None:
        folders.append(cache_dir() / "data" / cache_key(ctx.scenes, ctx.seed))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def reproduce(ctx: Context) -> Path:
    """Every stage in order, each reused when its marker says it finished; returns the results folder."""
    ctx.results.mkdir(parents=True, exist_ok=True)
    config = {"profile": ctx.profile, "seed": ctx.seed, "backbone": ctx.backbone, "data": ctx.data,
              "settings": dataclasses.asdict(ctx.settings)}  # fmt: skip
    manifest = Manifest("reproduce", config, seeds=[ctx.seed])
    # seconds per stage, summed over every run that worked on it (a stage killed by a time limit and
    # resumed by the next run counts both parts); SIGTERM (`timeout`) unwinds so the part is counted
    spent_file = ctx.cache / "stage_seconds.json"
    spent: dict[str, float] = json.loads(spent_file.read_text()) if spent_file.exists() else {}
    signal.signal(signal.SIGTERM, _terminate)
    for index, (name, fn) in enumerate(STAGES, start=1):
        done = ctx.cache / f"{name}.done.json"
        where = f"[{index}/{len(STAGES)} {name}]"
        if done.exists():
            log.info("%s reused (finished earlier; --fresh recomputes)", where)
            manifest.update(**{name: json.loads(done.read_text())})
            continue
        log.info("%s started", where)
        t0 = time.perf_counter()
        try:
            out = fn(ctx)
        finally:
            spent[name] = round(spent.get(name, 0.0) + time.perf_counter() - t0, 2)
            write_json(spent, spent_file)
        log.info("%s done in %.1f s", where, spent[name])
        write_json(out, done)
        manifest.update(**{name: out})
        _write_manifest(manifest, spent, ctx)  # after every stage: the report stage reads it
    _write_manifest(manifest, spent, ctx)
    return ctx.results
