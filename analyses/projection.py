"""A projection, not a measurement: the wall-clock speedup that the exit depths measured on the
embedded model would give on a larger decoder (BLIP-2 OPT-2.7b's language model), from per-token
costs measured at that shape on the same kind of GPU.

Costs come from `tests/benchmarks/bench_engine.py` (a pytest-benchmark JSON): per KV policy, the full
model's time per token over its `num_layers` L, and that of a static exit at layer L/2 (every token
leaves there). Their difference prices a skipped layer, c = (t_full - t_half) / (L - L/2): what skipping
it saves under that policy (`propagate` still fills its K/V, so it saves less than `deferred`); the
rest of a full token, F = t_full - L c, is the fixed cost (embedding, head, sampling, host work). One exit check, k, is
the bench's `ms_per_exit_check` (a DeeBERT-style head over the vocabulary, the rule, a host sync).
Each engine (eager, graphs) has its own costs, and a point is priced with those of its engine.

Depths come from the timed sweep points: each point's histogram of token exit layers
(`exit_layer_hist`) on the embedded model of depth D, consulted at the sweep's `exits_at`. A token that
leaves at layer e runs e L / D layers on the projected model and pays one check per consulted exit at
or below e; FREE's and distillation's exits add their generator layer to each check (one more c).
Projected speedup = sum over tokens of (F + L c) / sum of (F + e L / D c + n (k + g c)).
The prefix (vision tower, Q-Former) is left out: it is not measured at BLIP-2 scale and would lower
every projected speedup. A point's `engine` (eager or graphs) is kept beside its measured speedup,
which is against the full model through that engine: two engines at one threshold are two rows.
"""

from __future__ import annotations

import json

import pandas as pd

from analyses.checks import require

GENERATOR_EXITS = ("free", "distill")  # methods whose exit runs a whole decoder layer before its head
UNCHECKED = ("static",)
COST_COLUMNS = [
    "policy",
    "model",
    "num_layers",
    "ms_per_skipped_layer",
    "ms_fixed_per_token",
    "ms_per_exit_check",
]


def costs_from_bench(bench: dict) -> pd.DataFrame:
    """Per KV policy and engine, the per-layer, fixed and per-check costs of the CUDA static-exit
    benchmarks in a pytest-benchmark JSON (`bench_engine.py`); empty when it holds none. Per-token
    times are whole decodes over their tokens in both tests, so the two engines are priced alike."""
    rows = []
    for b in bench.get("benchmarks", []):
        e, name = b.get("extra_info", {}), b.get("name", "")
        if e.get("machine", {}).get("timer") != "cuda_event":
            continue
        if name.startswith("test_static_exit"):
            full, half, engine = (
                e["ms_per_token_full"],
                e["ms_per_token_static_exit"],
                e.get("engine", "eager"),
            )
        elif name.startswith("test_graphs_engine"):  # its ms_per_token_full leaves the prompt pass out
            full, engine = e["ms_per_decode_full"] / e["new_tokens"], "graphs"
            half = full / e["measured_speedup"]
        else:
            continue
        depth, exit_layer = int(e["num_layers"]), int(e["exit_layer"])
        per_layer = (full - half) / (depth - exit_layer)
        rows.append(
            (
                e["policy"],
                e["model"],
                depth,
                per_layer,
                full - depth * per_layer,
                e["ms_per_exit_check"],
                engine,
            )
        )
    return pd.DataFrame(rows, columns=[*COST_COLUMNS, "engine"])


def physical_costs(costs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The cost rows a projection can rest on, and why each other one cannot. A row is dropped when
    its static exit saved more than the layers it skipped (fixed cost per token below 0) or its exit
    check came out negative. The cost model (a fixed part, a price per layer, a price per check) does
    not fit such a row, whatever the cause: on the eager engine, host-bound, a K/V fill costs launches
    rather than FLOPs and the regions' timings vary from run to run (commit 058e16a, H200). Pricing tokens
    with it would project speedups the model cannot support."""
    require(costs, COST_COLUMNS, "costs")
    bad = (
        (costs["ms_per_skipped_layer"] <= 0)
        | (costs["ms_fixed_per_token"] < 0)
        | (costs["ms_per_exit_check"] < 0)
    )
    notes = []
    for _, c in costs[bad].iterrows():
        notes.append(
            f"{c.get('engine', 'eager')} engine, {c['policy']}: per skipped layer {c['ms_per_skipped_layer']:.3f} "
            f"ms, fixed {c['ms_fixed_per_token']:.3f} ms/token, check {c['ms_per_exit_check']:.3f} ms"
        )
    return costs[~bad].reset_index(drop=True), notes


def _token_costs(hist: dict[str, int], exits: list[int], depth: int, target: int):
    """(tokens, summed layers run on the target, summed checks) of one exit-layer histogram."""
    tokens = layers = checks = 0.0
    for layer, count in hist.items():
        e = int(layer)
        tokens += count
        layers += count * e * target / depth
        checks += count * sum(1 for x in exits if x <= e and x < depth)
    return tokens, layers, checks


def compute_projection(points: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Per timed point (columns method, kv_policy, threshold, exit_layer_hist, exits_at, depth, and
    optionally measured/expected speedup) and per cost row of the same KV policy: the projected
    speedup on the cost row's model, with the costs it rests on."""
    require(points, ["method", "kv_policy", "threshold", "exit_layer_hist", "exits_at", "depth"], "points")
    require(costs, COST_COLUMNS, "costs")
    out = []
    for _, p in points.iterrows():
        same = costs["policy"] == p["kv_policy"]
        if "engine" in costs.columns:  # a point is priced with the costs of the engine that timed it
            same &= costs["engine"] == (p["engine"] if "engine" in p else "eager")
        for _, c in costs[same].iterrows():
            exits = [int(x) for x in str(p["exits_at"]).split(",") if x.strip()]
            hist = json.loads(p["exit_layer_hist"])
            tokens, layers, checks = _token_costs(hist, exits, int(p["depth"]), int(c["num_layers"]))
            if tokens == 0:
                continue
            if p["method"] in UNCHECKED:  # a fixed exit layer decides without a confidence check
                checks = 0.0
            check = c["ms_per_exit_check"] + (
                c["ms_per_skipped_layer"] if p["method"] in GENERATOR_EXITS else 0.0
            )
            full = tokens * (c["ms_fixed_per_token"] + c["num_layers"] * c["ms_per_skipped_layer"])
            early = tokens * c["ms_fixed_per_token"] + layers * c["ms_per_skipped_layer"] + checks * check
            row = {k: p[k] for k in ("method", "regime", "kv_policy", "engine", "threshold") if k in p}
            row |= {k: p[k] for k in ("measured_speedup", "expected_speedup") if k in p}
            out.append({**row, "model": c["model"], "mean_exit_layer": layers / tokens,
                        "checks_per_token": checks / tokens, "ms_per_skipped_layer": c["ms_per_skipped_layer"],
                        "ms_fixed_per_token": c["ms_fixed_per_token"], "ms_per_check": check,
                        "projected_speedup": full / early})  # fmt: skip
    return pd.DataFrame(out)


def projection_points(sweep: pd.DataFrame) -> pd.DataFrame:
    """The batch-1 timed VQA points of the sweep rows (`analyses.load`), with their sweep's consulted
    exits and the embedded model's depth (the full model's row)."""
    require(
        sweep, ["method", "timer", "task", "metric", "batch_size", "sweep", "exits_at", "threshold"], "sweep"
    )
    rows = sweep[(sweep["timer"] != "none") & (sweep["task"] == "vqa") & (sweep["metric"] == "vqa_accuracy")]
    rows = rows[(rows["batch_size"] == 1) & (rows["perturbation"] == "none") & (rows["split"] == "test")]
    depth = rows[rows["method"] == "full"].groupby("sweep")["threshold"].first().rename("depth")
    pts = rows[~rows["method"].isin(["full", "oracle"]) & rows["exits_at"].astype(bool)]
    return pts.join(depth, on="sweep", how="inner").reset_index(drop=True)
