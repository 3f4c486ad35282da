"""`free-bench reproduce`: data -> backbone -> exits -> sweeps -> robustness -> report, into
results/<profile>/, reusing finished stages (`reproduce_stages` holds the stages after the backbone).

Stages are functions `(ctx) -> dict` registered in order; each writes its outputs atomically and a
done-marker into the cache, so a killed run resumes at the first unfinished stage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from free_bench.cli import command
from free_bench.config import cache_dir, get_profile
from free_bench.records import Manifest, atomic_path, write_json


@dataclass(frozen=True)
class Context:
    profile: str
    seed: int
    results: Path  # results/<profile>/
    cache: Path  # cache/reproduce/<profile>/


STAGES: list[tuple[str, Callable[[Context], dict]]] = []


def stage(name: str):
    def register(fn: Callable[[Context], dict]) -> Callable[[Context], dict]:
        STAGES.append((name, fn))
        return fn

    return register


@stage("data")
def _data(ctx: Context) -> dict:
    from free_bench.commands.data import count_table
    from free_bench.data.scenes_dataset import load_scenes, scenes_hash

    ds = load_scenes(ctx.profile, ctx.seed)
    table = count_table(ds)
    with atomic_path(ctx.results / "data_counts.csv") as tmp:
        table.to_csv(tmp)
    return {"dataset_hash": scenes_hash(ctx.profile, ctx.seed), "rows": {s: len(d) for s, d in ds.items()}}


@stage("backbone")
def _backbone(ctx: Context) -> dict:
    """Pretrain (or reuse) the embedded backbone; copy its manifest and quality report to results/."""
    from free_bench.backbone.load import embedded_dir
    from free_bench.backbone.pretrain_run import check_current, pretrain

    spec = f"embedded:{ctx.profile}"
    folder = embedded_dir(spec, ctx.seed)
    if not (folder / "manifest.json").exists():
        pretrain(ctx.profile, "opt", folder, seed=ctx.seed)
    check_current(folder, ctx.profile, "opt")
    out = ctx.results / "backbone"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "quality.json"):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes((folder / name).read_bytes())
    quality = json.loads((folder / "quality.json").read_text())
    return {"backbone": spec, "vqa_accuracy": quality["vqa_accuracy"], "folder": str(folder)}


from free_bench.commands import reproduce_stages  # noqa: E402, F401  (registers exits .. report after these)


def _write_manifest(manifest: Manifest, spent: dict[str, float], ctx: Context) -> None:
    manifest.update(stage_seconds=spent, total_seconds=round(sum(spent.values()), 1),
                    dataset_hash=manifest.data.get("data", {}).get("dataset_hash"))  # fmt: skip
    manifest.write(ctx.results / "manifest.json")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def default_profile() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="smoke | cpu | gpu (default: gpu with CUDA, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results/)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing them")


def run(args: argparse.Namespace) -> int:
    profile = args.profile or default_profile()
    get_profile(profile)
    ctx = Context(profile, args.seed, args.results / profile, cache_dir() / "reproduce" / profile)
    if args.fresh:  # every stage's work: its markers, exits, sweeps, the backbone and the dataset
        from free_bench.backbone.load import embedded_dir
        from free_bench.data.scenes_dataset import cache_key

        for folder in (ctx.cache, embedded_dir(f"embedded:{profile}", args.seed),
                       cache_dir() / "data" / cache_key(profile, args.seed)):  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
    ctx.results.mkdir(parents=True, exist_ok=True)
    manifest = Manifest("reproduce", {"profile": profile, "seed": args.seed}, seeds=[args.seed])
    # seconds per stage, summed over every run that worked on it (a stage killed by a time limit and
    # resumed by the next run counts both parts); SIGTERM (`timeout`) unwinds so the part is counted
    spent_file = ctx.cache / "stage_seconds.json"
    spent: dict[str, float] = json.loads(spent_file.read_text()) if spent_file.exists() else {}
    signal.signal(signal.SIGTERM, _terminate)
    for name, fn in STAGES:
        done = ctx.cache / f"{name}.done.json"
        if done.exists():
            print(f"[{name}] reused (finished earlier; --fresh recomputes)")
            manifest.update(**{name: json.loads(done.read_text())})
            continue
        t0 = time.perf_counter()
        try:
            out = fn(ctx)
        finally:
            spent[name] = round(spent.get(name, 0.0) + time.perf_counter() - t0, 2)
            write_json(spent, spent_file)
        print(f"[{name}] done in {spent[name]:.1f} s")
        write_json(out, done)
        manifest.update(**{name: out})
        _write_manifest(manifest, spent, ctx)  # after every stage: the report stage reads it
    _write_manifest(manifest, spent, ctx)
    print(f"results in {ctx.results}")
    return 0


command(
    "reproduce",
    "Run every stage end to end into results/<profile>/ (finished stages are reused).",
    "free-bench reproduce --profile smoke",
    _add_args,
    run,
)
