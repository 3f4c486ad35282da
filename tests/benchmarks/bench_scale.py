"""BLIP-2 scale on one GPU: random-init full-size BLIP-2 (OPT-2.7b or Flan-T5-XL, built from config and
saved as a directory) through exit training for every trainable method and live sweeps at batch 1.

Not a timed test: run it as a program on a CUDA machine, with data folders written by `free-bench data`
from official-format files (`free-bench data --dataset scenes --export vqav2` writes such files):

    python tests/benchmarks/bench_scale.py --size blip2-opt-2.7b --train-data D/train --test-data D/test \
        --work /tmp/scale --out results/gpu/scale

It writes `scale_<size>.csv` (one row per method: peak GPU memory and step time of exit training, and
per sweep point the per-question latency at batch 1, the share of it spent before the first exit can
act, the measured and expected speedups) and `exit_check_<size>.csv` (one exit check's cost, CUDA
events). With random weights the exits' confidences are noise, so the sweep brackets what a method can
do: threshold 0 exits at the first exit on every token, the highest threshold never exits (every check
paid, no layer skipped). Each run folder resumes, so a killed run continues where it stopped.

`--replay SWEEP [SWEEP ...]` (with `--scenes P`) then replays the per-token exit depths that P's live
sweeps recorded (`free_bench.evaluation.replay`) with this model's exits, through `--replay-engines`,
into `replay_samples_<size>.csv` and `replay_<size>.csv`:

    python tests/benchmarks/bench_scale.py --size blip2-opt-2.7b --scenes cpu --work /tmp/scale \
        --out results/gpu/scale --stage replay --replay results/gpu/scale/replay_source/live-free-semi-b1 --replay-rows 60

The gpu profile's 24 layers map onto OPT-2.7b's 32 only with `--replay-map nearest` (its exits 4, 8, 12,
16, 20 onto 5, 11, 16, 21, 27, which `--exits 5,11,16,21,27` trains).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

#: method -> (thresholds bracketing its rule, sweep method name)
DEVICE = "cuda"
BRACKETS = {"free": (0.0, 1.0), "deebert": (100.0, 0.0), "pabee": (1.0, 100.0), "distill": (0.0, 1.0)}


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_all(ckpt: Path, data: Path, work: Path, methods: list[str], steps: int, placement: str,
              batch_size: int) -> list[dict]:  # fmt: skip
    from free_bench.training.run import train_exit_run

    rows = []
    for method in methods:
        _reset_peak()
        t0 = time.perf_counter()
        try:
            manifest = train_exit_run(work / "exits" / method, method=method, backbone=str(ckpt), regime="semi",
                                      exits=placement, tasks=("vqa",), steps=steps, data=data, device=DEVICE,
                                      batch_size=batch_size)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one method's failure is a row of the table, not the end
            rows.append({"method": method, "error": f"{type(exc).__name__}: {exc}"})
            print(f"FAILED {method}: {rows[-1]['error']}", flush=True)
            continue
        hidden = manifest.get("hidden_states") or {}
        rows.append({"method": method, "train_steps": steps, "train_batch_size": batch_size,
                     "train_peak_gib": _peak_gib(), "train_step_ms": 1e3 * manifest["train_seconds"] / steps,
                     "train_wall_s": time.perf_counter() - t0, "teacher_forced_passes": hidden.get("teacher_forced_passes"),
                     "batch_hidden_mib": hidden.get("batch_hidden_mib")})  # fmt: skip
        print(f"trained {method}: {rows[-1]}", flush=True)
    return rows


def sweep_all(work: Path, data: Path, methods: list[str], rows: int, engine: str,
              bracket: list[str], out: Path, tag: str) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Each method's live sweep; the tables are rewritten after every method, so a run cut short keeps
    what it finished."""
    from free_bench.engine import time_region
    from free_bench.evaluation.sweep import SweepSpec, load_method, run_sweep
    from free_bench.methods import load_exits

    points, checks = [], []
    backbone = None
    for method in methods:
        exits = work / "exits" / method
        if not (exits / "manifest.json").exists():
            print(f"no trained exits for {method}: not swept", flush=True)
            continue
        thresholds = BRACKETS[method] if method in bracket else BRACKETS[method][:1]
        spec = SweepSpec(method=method, exits=str(exits), split="test", mode="live", thresholds=thresholds,
                         tasks=("vqa",), max_rows=rows, warmup=3, engine=engine, data=str(data),
                         hf_baseline=False)  # fmt: skip
        if backbone is None:
            backbone = load_exits(exits, device=DEVICE).backbone
        loaded = load_method(spec, DEVICE, backbone)
        _reset_peak()
        df = run_sweep(spec, work / "sweeps" / f"{method}-{engine}", loaded=loaded, progress=True)
        samples = pd.read_parquet(work / "sweeps" / f"{method}-{engine}" / "samples.parquet")
        for (name, threshold), s in samples.groupby(["method", "threshold"]):
            row = df[(df["method"] == name) & (df["threshold"] == threshold)].iloc[0]
            points.append({"method": method, "point": name, "threshold": threshold, "engine": engine,
                           "questions": len(s), "latency_ms_median": s["latency_ms"].median(),
                           "latency_ms_p90": s["latency_ms"].quantile(0.9),
                           "prefix_ms_median": s["prefix_ms"].median(),
                           "prefix_share": (s["prefix_ms"] / s["latency_ms"]).median(),  # vision + Q-Former + projection
                           "measured_speedup": row["measured_speedup"], "expected_speedup": row["expected_speedup"],
                           "mean_exit_layer": row["mean_exit_layer"], "sweep_peak_gib": _peak_gib()})  # fmt: skip
        checks.append(_exit_check(loaded[0], time_region))
        pd.DataFrame(points).to_csv(out / f"sweep_{tag}_{engine}.csv", index=False)
        pd.DataFrame(checks).to_csv(out / f"exit_check_{tag}.csv", index=False)
        print(f"swept {method} ({engine}): {points[-1]}", flush=True)
    return points, checks


@torch.inference_mode()
def _exit_check(method, time_region) -> dict:
    """One exit check at batch 1 on one token: the exit's modules and the shared head, then the rule's
    confidence (max-prob), timed with CUDA events."""
    bb = method.backbone
    k = method.layers[0]
    h = torch.randn(1, 1, bb.lm_config.hidden_size, device=bb.device, dtype=bb.dtype)  # (B, T, D)
    mask = torch.ones(1, 1, dtype=torch.long, device=bb.device)

    encoder = None
    if method.generators is not None and bb.lm_type == "t5":  # a T5 block cross-attends: 32 query + 8 text
        from free_bench.models.runner_state import Encoded

        encoder = Encoded(torch.randn(1, 40, h.shape[-1], device=bb.device, dtype=bb.dtype),
                          torch.ones(1, 40, dtype=torch.long, device=bb.device))  # fmt: skip

    def check() -> None:
        method.exit_logits(k, h, mask, encoder).float().softmax(-1).max(-1)

    def layer() -> None:
        bb.logits_from_hidden(h)

    t_check = time_region(check, warmup=5, repeats=50, device=bb.device, dtype=bb.dtype, batch_size=1)
    t_head = time_region(layer, warmup=5, repeats=50, device=bb.device, dtype=bb.dtype, batch_size=1)
    params = sum(p.numel() for m in method.exit_modules(k) for p in m.parameters())
    return {"method": method.name, "exit_layer": k, "exit_modules": ", ".join(type(m).__name__ for m in method.exit_modules(k)),
            "exit_params_m": params / 1e6, "check_ms_median": t_check.median_ms, "check_ms_p90": t_check.p90_ms,
            "head_only_ms_median": t_head.median_ms, "timer": t_check.timer}  # fmt: skip


def replay_all(work: Path, ckpt: Path, sources: list[Path], profile: str, rows: int, engines: tuple[str, ...],
               out: Path, tag: str, placement: str, middle_only: bool, nearest: bool) -> pd.DataFrame:  # fmt: skip
    """Every live point of the `sources` sweep folders (the embedded `profile`'s, per-token depths
    recorded) replayed on this backbone with its exits of the same method: static and mue need no
    training and are built here. Per-sample rows go to `replay_samples_<size>.csv` as they come, beside
    the rows of other sources already there (a source replayed again replaces its own)."""
    from analyses.scale import compute_replay
    from free_bench.data.source import open_scenes
    from free_bench.evaluation.replay import recorded_points, replay_point
    from free_bench.methods import load_exits
    from free_bench.methods.registry import build_method
    from free_bench.models import load_backbone

    backbone, methods = None, {}
    test = open_scenes(profile, 0, progress=False).split("test")  # the questions the depths were recorded on
    names = {f"{profile} profile, {Path(source).name}" for source in sources}
    kept = out / f"replay_samples_{tag}.csv"
    kept = pd.read_csv(kept) if kept.exists() else pd.DataFrame(columns=["source"])
    frames = [kept[~kept["source"].isin(names)]]
    for source in sources:
        points = recorded_points(source, max_samples=rows)
        if middle_only:  # a sweep's middle threshold: the live sweeps' operating point, its neighbours beside
            points = [sorted(points, key=lambda q: q.threshold)[len(points) // 2]] if points else []
        for point in points:
            if point.method not in methods:
                trained = work / "exits" / point.method
                if (trained / "manifest.json").exists():
                    methods[point.method] = load_exits(trained, backbone=backbone, device=DEVICE)
                    backbone = methods[point.method].backbone
                elif point.method in ("static", "mue"):
                    backbone = backbone or load_backbone(str(ckpt), device=DEVICE)
                    methods[point.method] = build_method(point.method, backbone, placement)
                else:
                    print(f"no {point.method} exits at this size: {source} not replayed", flush=True)
                    continue
            engines_here = engines if methods[point.method].backbone.lm_type == "opt" else ("eager",)
            frames.append(replay_point(point, methods[point.method], test, engines=engines_here, nearest=nearest,
                                       source=f"{profile} profile, {Path(source).name}"))  # fmt: skip
            pd.concat(frames).to_csv(out / f"replay_samples_{tag}.csv", index=False)
            print(compute_replay(frames[-1].assign(model=tag)).round(3).to_string(index=False), flush=True)
    both = pd.concat(frames, ignore_index=True)
    return compute_replay(both.assign(model=tag)) if len(both) else pd.DataFrame()


def exported_data(profile: str, work: Path) -> tuple[Path, Path]:
    """The profile's exit_train and test scenes written as official VQAv2 files, then each read back
    into a data folder by the VQAv2 loader, through the CLI a user runs."""
    import subprocess
    import sys

    def cli(*argv: str) -> None:
        subprocess.run([sys.executable, "-m", "free_bench", *argv], check=True, stdout=subprocess.DEVNULL)

    exp = work / "exported"
    cli("data", "--dataset", "scenes", "--profile", profile, "--splits", "exit_train", "test",
        "--export", "vqav2", "--out", str(exp))  # fmt: skip
    folders = []
    for split in ("exit_train", "test"):
        out = work / f"data-{split}"
        cli("data", "--dataset", "vqav2", "--questions", str(exp / split / "questions.json"), "--annotations",
            str(exp / split / "annotations.json"), "--images", str(exp / split / "images"), "--splits", split,
            "--out", str(out))  # fmt: skip
        folders.append(out)
    return folders[0], folders[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", required=True, choices=("blip2-opt-2.7b", "blip2-flan-t5-xl", "tiny-opt", "tiny-t5"))
    p.add_argument("--device", default="cuda", help="cuda (the benchmark), or cpu for a dry run of tiny sizes")
    p.add_argument("--train-data", type=Path, help="a data folder with an exit_train split")
    p.add_argument("--test-data", type=Path, help="a data folder with a test split")
    p.add_argument("--scenes", default=None,
                   help="instead of --train-data/--test-data: export this profile's scenes as VQAv2 files "
                        "and read them back with `free-bench data --dataset vqav2` (the official-format path)")
    p.add_argument("--work", type=Path, required=True, help="checkpoint, exits and sweeps (resumable)")
    p.add_argument("--out", type=Path, required=True, help="where the tables go")
    p.add_argument("--methods", nargs="+", default=list(BRACKETS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--exits", default="every:4", help="exit placement (default every:4)")
    p.add_argument("--batch-size", type=int, default=8, help="exit-training rows a step")
    p.add_argument("--engine", default="eager", choices=("eager", "graphs"))
    p.add_argument("--stage", default="all", choices=("all", "train", "sweep", "replay"))
    p.add_argument("--replay", nargs="*", type=Path, default=[],
                   help="live sweep folders of the --scenes profile whose per-token depths are replayed")
    p.add_argument("--replay-rows", type=int, default=100, help="questions replayed per point")
    p.add_argument("--replay-points", default="middle", choices=("middle", "all"),
                   help="each source sweep's middle threshold (its operating point), or every threshold")
    p.add_argument("--replay-engines", nargs="+", default=["eager", "graphs"], choices=("eager", "graphs"))
    p.add_argument("--replay-map", default="exact", choices=("exact", "nearest"),
                   help="source layer -> target layer by depth fraction: exactly (else an error), or the nearest")
    p.add_argument("--bracket", nargs="*", default=["free"],
                   help="methods swept at both ends (exit at the first exit, never exit); others at the first only")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    from free_bench.models.random_checkpoint import save_random_blip2

    if args.scenes:
        args.train_data, args.test_data = exported_data(args.scenes, args.work)
    if args.train_data is None or args.test_data is None:
        p.error("give --train-data and --test-data, or --scenes PROFILE")
    ckpt = args.work / f"ckpt-{args.size}"
    if not (ckpt / "config.json").exists():
        t0 = time.perf_counter()
        save_random_blip2(ckpt, args.size, device=DEVICE, dtype=torch.bfloat16 if DEVICE != "cpu" else None)
        print(f"built and saved {args.size} in {time.perf_counter() - t0:.1f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.size
    if args.stage in ("all", "train"):
        train = pd.DataFrame(train_all(ckpt, args.train_data, args.work, args.methods, args.steps, args.exits,
                                       args.batch_size))  # fmt: skip
        train.to_csv(args.out / f"train_{tag}.csv", index=False)
        print(train.round(3).to_string(index=False), flush=True)
    if args.stage in ("all", "sweep"):
        points, checks = sweep_all(args.work, args.test_data, args.methods, args.rows, args.engine, args.bracket,
                                   args.out, tag)  # fmt: skip
        print(pd.DataFrame(points).round(3).to_string(index=False))
        print(pd.DataFrame(checks).round(4).to_string(index=False))
    if args.replay and args.stage in ("all", "replay"):
        if not args.scenes:
            p.error("--replay needs --scenes: the profile whose questions the depths were recorded on")
        summary = replay_all(args.work, ckpt, args.replay, args.scenes, args.replay_rows,
                             tuple(args.replay_engines), args.out, tag, args.exits,
                             args.replay_points == "middle", args.replay_map == "nearest")  # fmt: skip
        summary.to_csv(args.out / f"replay_{tag}.csv", index=False)
        print(summary.round(3).to_string(index=False), flush=True)
    name = torch.cuda.get_device_name() if DEVICE != "cpu" else "cpu"
    (args.out / f"device_{tag}.json").write_text(json.dumps({"device": name, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
