"""A sweep over several processes (`torchrun --nproc-per-node N free-bench sweep ...`): each rank
decodes its contiguous share of the rows into `out/rank<r>/` (a complete, resumable sweep of its own,
timed on its own device), and rank 0 gathers them into `out/sweep.parquet` and `out/samples.parquet`
with a `rank` column: every timing is labelled with the rank that took it, and a point's quality over
all rows is the sample-weighted mean of its rows (`samples.parquet` holds every row's value).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import SWEEP, SWEEP_SAMPLES, read_json, write_json, write_parquet
from free_bench.evaluation.sweep import SPEC_FILE, SweepSpec, run_sweep
from free_bench.training.distributed import barrier, init_from_env, shutdown

RANKS_FILE = "ranks.json"


def run_sweep_ranks(spec: SweepSpec, out: Path, device: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> pd.DataFrame | None:  # fmt: skip
    """`run_sweep`, or under torchrun its sharded form; returns the gathered table on rank 0 (None on
    the other ranks)."""
    out = Path(out)
    dist, device = init_from_env(device)
    try:
        if dist.world == 1:
            return run_sweep(spec, out, device=device, progress=progress, overwrite=overwrite)
        if (out / SPEC_FILE).exists():
            raise FreeBenchError(f"{out} holds a single-process sweep; choose another --out for {dist.world} ranks")
        recorded = read_json(out / RANKS_FILE) if (out / RANKS_FILE).exists() else None
        if recorded is not None and recorded.get("ranks") != dist.world and not overwrite:
            raise FreeBenchError(f"{out} holds a sweep over {recorded.get('ranks')} ranks, not {dist.world}; "
                                 "pass --overwrite or choose another --out")  # fmt: skip
        shard = (dist.rank, dist.world)
        run_sweep(spec, out / f"rank{dist.rank}", device=device, progress=progress and dist.main,
                  overwrite=overwrite, shard=shard)  # fmt: skip
        barrier(dist)
        df = gather(out, dist.world) if dist.main else None
        barrier(dist)
        return df
    finally:
        shutdown(dist)


def gather(out: Path, ranks: int) -> pd.DataFrame:
    """The ranks' tables as one, each row with its `rank`; written beside them."""
    frames, samples, manifests = [], [], []
    for r in range(ranks):
        folder = out / f"rank{r}"
        frames.append(pd.read_parquet(folder / "sweep.parquet").assign(rank=r))
        samples.append(pd.read_parquet(folder / "samples.parquet").assign(rank=r))
        manifests.append(json.loads((folder / "manifest.json").read_text()))
    df = SWEEP.validate(pd.concat(frames, ignore_index=True))
    write_parquet(df, out / "sweep.parquet", SWEEP)
    write_parquet(pd.concat(samples, ignore_index=True), out / "samples.parquet", SWEEP_SAMPLES)
    first = manifests[0]
    write_json({"spec": first["spec"], "backbone": first["backbone"], "prompts": first.get("prompts"),
                "scorer": first.get("scorer"), "data": first.get("data"), "dataset_hash": first.get("dataset_hash"),
                "ranks": ranks, "devices": [m["device"] for m in manifests],
                "timings": [m["timings"] for m in manifests]}, out / "manifest.json")  # fmt: skip
    write_json({"ranks": ranks}, out / RANKS_FILE)
    return df
