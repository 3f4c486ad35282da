"""Replays: the exit depths one model's live sweeps recorded per token, decoded on another backbone.

A live sweep records the layer every generated token left at (`exit_layers` in `samples.parquet`).
A replay maps those depths onto a larger backbone by depth fraction (layer e of D -> e L / D, which
must land on one of the target's trained exits or on L; with `nearest`, the nearest layer, for a target
whose depth is no multiple of the source's: 24 -> 32 maps exits 4, 8, 12, 16, 20 onto 5, 11, 16, 21, 27) and decodes each question's tokens with
`generate(..., schedule=...)`: every token stops where the recording says, the method's checks below
it run and are paid, exactly as many tokens are decoded as were recorded. The full model decoding
the same number of tokens and the prefix alone (vision tower, Q-Former, projection) are timed beside
every replay, interleaved, through the same engine. So a replay *measures* what those depths save at
the larger model's cost, where a projection prices them with per-layer costs.

With random weights at the target the tokens are noise; only the depths and the costs are the
recording's and the target's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
import torch
from tqdm.auto import tqdm

from free_bench.core.errors import FreeBenchError
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine.generate import generate, graph_decoder
from free_bench.engine.timing import time_region
from free_bench.evaluation.sweep_eval import prompts_for, warm_batches
from free_bench.methods.protocol import ExitMethod
from free_bench.models import runner


@dataclass(frozen=True)
class RecordedPoint:
    """One live sweep point of the source model: its method, exits and each sample's token depths."""

    method: str
    regime: str
    threshold: float
    exits_at: tuple[int, ...]  # the exits the source consulted
    depth: int  # the source model's layer count
    samples: tuple[tuple[str, tuple[int, ...]], ...]  # (sample id, exit layer of each token)


def recorded_points(sweep_dir: str | Path, max_samples: int | None = None) -> list[RecordedPoint]:
    """The batch-1 VQA live points of one `free-bench sweep` folder, with their per-token depths."""
    folder = Path(sweep_dir)
    files = [folder / n for n in ("sweep.parquet", "samples.parquet", "manifest.json")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FreeBenchError(f"{folder} is not a finished sweep folder: no {', '.join(missing)}")
    rows, samples = pd.read_parquet(files[0]), pd.read_parquet(files[1])
    spec = json.loads(files[2].read_text())["spec"]
    if spec.get("mode") != "live" or "exit_layers" not in samples or samples["exit_layers"].isna().all():
        raise FreeBenchError(
            f"{folder}: a replay needs a live sweep that recorded each token's exit layer (exit_layers)"
        )
    full = rows[rows["method"] == "full"]
    if full.empty:
        raise FreeBenchError(f"{folder}: no full-model row, so the source model's depth is unknown")
    depth = int(full["threshold"].iloc[0])
    keep = (samples["method"] != "full") & (samples["batch_size"] == 1) & (samples["task"] == "vqa")
    keep &= samples["perturbation"] == "none"
    points = []
    for (method, regime, threshold), g in samples[keep].groupby(["method", "regime", "threshold"], sort=True):
        exits = spec.get("exits_at") or ""
        consulted = tuple(int(x) for x in str(exits).split(",") if x.strip()) or _layers_seen(g, depth)
        g = g if max_samples is None else g.head(max_samples)
        recorded = tuple((str(s), tuple(json.loads(d))) for s, d in zip(g["sample_id"], g["exit_layers"], strict=True))
        points.append(RecordedPoint(str(method), str(regime), float(threshold), consulted, depth, recorded))
    return points


def _layers_seen(g: pd.DataFrame, depth: int) -> tuple[int, ...]:
    """Without a recorded placement: the exit layers the tokens used (a lower bound on what was consulted)."""
    seen = {k for d in g["exit_layers"] for k in json.loads(d)}
    return tuple(sorted(k for k in seen if k < depth))


def map_layer(layer: int, depth: int, target: int, *, nearest: bool = False) -> int:
    """Layer `layer` of a `depth`-layer model at the same depth fraction of a `target`-layer one; with
    `nearest`, the closest layer (halves round up) where the fraction falls between two."""
    mapped = layer * target / depth
    if nearest:
        return (2 * layer * target + depth) // (2 * depth)  # round(mapped), halves up, in integers
    if mapped != int(mapped):
        raise FreeBenchError(
            f"exit layer {layer} of {depth} maps to {mapped:g} of {target}: a replay needs a target whose "
            f"layer count is a multiple of the source's at every exit, or nearest-layer mapping"
        )
    return int(mapped)


def target_method(point: RecordedPoint, method: ExitMethod, *, nearest: bool = False) -> ExitMethod:
    """The target's trained exits, consulted at the source's exits mapped by depth fraction."""
    L = method.backbone.num_layers
    return method.restrict([map_layer(k, point.depth, L, nearest=nearest) for k in point.exits_at])


def replay_point(point: RecordedPoint, method: ExitMethod, rows: datasets.Dataset, *, engines: tuple[str, ...],
                 warmup: int = 3, progress: bool = True, source: str = "", nearest: bool = False) -> pd.DataFrame:  # fmt: skip
    """Per sample and engine: tokens, the replay's time, the full model's on as many tokens, the prefix's,
    and the layer-equivalents both spend (the engine's cost model). `rows` hold the samples' questions
    (matched by `question_id`); `source` names where the depths were recorded; `nearest` maps layers to
    the nearest one (`map_layer`), recorded in `mapping`."""
    target = target_method(point, method, nearest=nearest)
    bb, L = target.backbone, target.backbone.num_layers

    def to_target(k: int) -> int:
        return map_layer(k, point.depth, L, nearest=nearest)

    # a static exit's threshold is its layer, which moves with the depths; any other rule's stays
    threshold = to_target(int(point.threshold)) if target.rule == "static" else point.threshold
    index = {str(q): i for i, q in enumerate(rows["question_id"])}
    absent = [s for s, _ in point.samples if s not in index]
    if absent:
        raise FreeBenchError(f"{len(absent)} recorded question(s) are not in the target rows, e.g. {absent[:3]}")
    work = []
    for sample, layers in point.samples:
        row = rows.select([index[sample]])
        pv, prompts = pixel_values(bb, row["image"]), prompt_batch(bb, prompts_for(bb, row, "vqa"))
        work.append((sample, [to_target(k) for k in layers], pv, prompts))
    out = []
    for engine in engines:
        shapes = [(tuple(pv.shape), tuple(p["input_ids"].shape), len(s)) for _, s, pv, p in work]
        warm = set(warm_batches(shapes, warmup))
        bar = tqdm(work, desc=f"replay {point.method} {point.threshold:g} ({engine})", disable=not progress)
        for i, (sample, schedule, pv, prompts) in enumerate(bar):
            fns, last = _runners(target, engine, threshold, schedule, pv, prompts), {}
            if i in warm:
                for fn in fns.values():
                    fn(last)
            times = {}
            for name, fn in fns.items():  # interleaved: drift hits the three alike
                t = time_region(lambda fn=fn, last=last: fn(last), warmup=0, repeats=1, device=bb.device, dtype=bb.dtype,
                                batch_size=1)  # fmt: skip
                times[name] = t.median_ms
            res, full = last["replay"], last["full"]
            assert res.exit_layers[0].tolist() == schedule, "the replay did not follow its schedule"
            out.append({"source": source, "method": point.method, "regime": point.regime, "threshold": point.threshold,
                        "engine": engine, "sample_id": sample, "tokens": len(schedule),
                        "mean_exit_layer": sum(schedule) / len(schedule), "exit_layers": json.dumps(schedule),
                        "replay_ms": times["replay"],
                        "full_ms": times["full"], "prefix_ms": times["prefix"], "cost_layers": res.cost_layers,
                        "full_cost_layers": full.cost_layers, "timer": t.timer,
                        "exits_at": ",".join(str(k) for k in target.layers),
                        "mapping": f"{point.depth}->{L} {'nearest' if nearest else 'exact'}"})  # fmt: skip
    return pd.DataFrame(out)


def _runners(method: ExitMethod, engine: str, threshold: float, schedule: list[int], pv: torch.Tensor,
             prompts: dict) -> dict:  # fmt: skip
    bb, n = method.backbone, len(schedule)
    ids, am = prompts["input_ids"], prompts.get("attention_mask")

    def full(last: dict) -> None:
        last["full"] = generate(bb, pixel_values=pv, **prompts, max_new_tokens=n, engine=engine, stop_at_eos=False)

    def prefix(last: dict) -> None:  # vision tower, Q-Former, projection: what no exit skips
        with torch.inference_mode():
            if engine == "graphs":
                graph_decoder(bb, None, "full", None, ids, n).prefix(pv, ids, am)
            else:
                runner.prefix(bb, pv, ids, am)

    def replay(last: dict) -> None:
        last["replay"] = generate(bb, method, pixel_values=pv, **prompts, threshold=threshold, engine=engine,
                                  schedule=schedule)  # fmt: skip

    return {"full": full, "prefix": prefix, "replay": replay}
