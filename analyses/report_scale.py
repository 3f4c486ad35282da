"""The report's parts about cost at other sizes and of the sweeps themselves: the measurements at BLIP-2
size (`scale/`), the projection of the timed points' exit depths onto a larger decoder's engine costs
(`engine/`), and each simulated sweep's seconds against its recording pass."""

from __future__ import annotations

import json

import pandas as pd

from analyses.built import Built
from analyses.projection import compute_projection, costs_from_bench, physical_costs, projection_points
from analyses.sweep_cost import compute_sweep_cost


def engine_costs(b: Built) -> pd.DataFrame:
    """Per-layer, fixed and per-check costs of the CUDA engine benchmarks here (may be empty)."""
    benches = sorted((b.res.root / "engine").glob("bench_engine_*.json"))
    costs = [costs_from_bench(json.loads(f.read_text())) for f in benches]
    return pd.concat(costs, ignore_index=True) if costs else pd.DataFrame()


def projection_part(b: Built) -> None:
    """Exit depths of the timed points priced with a larger decoder's costs (`analyses.projection`)."""
    costs = engine_costs(b)
    if costs.empty or b.res.sweep is None:
        b.missing["projection"] = "no CUDA engine benchmark (engine/bench_engine_*.json) or no sweeps here"
        return
    costs, dropped = physical_costs(costs)
    if dropped:
        b.res.notes.append(
            "projection: cost rows left out, which its cost model does not fit (a static exit saving more "
            "than its layers, or a negative exit check): " + "; ".join(dropped)
        )
    if costs.empty:
        b.missing["projection"] = "every engine benchmark's cost row was left out (see the notes)"
        return
    points = projection_points(b.res.sweep)
    if points.empty:
        b.missing["projection"] = "no timed batch-1 VQA point with its consulted exits recorded"
        return
    b.tables["projection"] = compute_projection(points, costs)


def scale_part(b: Built) -> None:
    """`scale/` (tests/benchmarks/bench_scale.py): measured at full BLIP-2 size, random weights."""
    from analyses.scale import compute_replay, compute_scale, load_replay, load_scale

    sweeps, checks = load_scale(b.res.root / "scale")
    if sweeps.empty:
        b.missing["scale"] = "no BLIP-2-size benchmark here (scale/sweep_*.csv)"
        return
    b.tables["blip2_scale"] = compute_scale(sweeps, checks)
    replay = load_replay(b.res.root / "scale")
    if replay.empty:
        b.missing["blip2_replay"] = "no replay of recorded exit depths at BLIP-2 size (scale/replay_samples_*.csv)"
        return
    costs = engine_costs(b)
    b.tables["blip2_replay"] = compute_replay(replay, physical_costs(costs)[0] if len(costs) else costs)


def sweep_cost_part(b: Built) -> None:
    """Each simulated sweep's seconds against its recording pass (target: within 1.2x)."""
    if b.res.sweep_timings is None:
        b.missing["sweep_cost"] = "no simulated sweep recorded its seconds (manifest `timings`)"
        return
    b.tables["simulated_sweep_cost"] = compute_sweep_cost(b.res.sweep_timings)
