"""Threshold sweeps: quality, expected and measured speedup of one exit method, point by point.

Every finished point (task, threshold) is written at once to `points/` (a small JSON of its records,
and a `.samples.npy` of its per-sample numbers); a rerun with the same spec skips them, so a killed
sweep resumes (a live sweep decodes its thresholds together, batch by batch, and writes them when it
ends). `sweep.parquet` (schema `records.SWEEP`) gathers them, with the full model as a reference point
(`method="full"`) per task; `samples.parquet` (`records.SWEEP_SAMPLES`) holds the per-sample values
that bootstrap CIs resample.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from free_bench.config import DECODES, MODES
from free_bench.config import SWEEP_SPLITS as SPLITS
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import SWEEP, SWEEP_SAMPLES, device_name, read_json, write_json, write_parquet
from free_bench.core.runs import check_same, check_writable, differences, remove_run, writer_lock
from free_bench.engine.cost import cost_model
from free_bench.engine.generate import ENGINES
from free_bench.engine.graphs.conditional import graph_step_mode
from free_bench.engine.graphs.decoder import GRAPH_POLICIES
from free_bench.engine.kv_policies import POLICIES
from free_bench.evaluation import sweep_eval as S
from free_bench.evaluation.metrics import vqa_accuracy
from free_bench.evaluation.sweep_captions import CAPTIONS, gather_captions, save_texts
from free_bench.evaluation.sweep_legacy import point_n_samples, with_n_samples
from free_bench.methods import ExitMethod, get_method, load_exits, rules

SPEC_FILE = "sweep_spec.json"  # the sweep's provenance: its spec and its exits' fingerprint


@dataclass(frozen=True)
class SweepSpec:
    method: str
    exits: str
    split: str
    mode: str
    thresholds: tuple[float, ...]
    kv_policy: str = "propagate"
    batch_size: int = 1
    perturb: str | None = None
    tasks: tuple[str, ...] = ("vqa",)
    max_rows: int | None = None
    warmup: int = 3
    repeats: int = 1
    compact: bool = True  # False: exited rows ride along until the batch's slowest row is done
    exits_at: str | None = None  # consult only these trained exits (a sparse subset of a dense placement)
    engine: str = "eager"  # live decoding: the eager layer loop, or CUDA graphs per segment (engine.graphs)
    data: str | None = None  # a `free-bench data` folder (default: the data the exits were trained beside)
    backbone: str | None = None  # default: the one the exits name (it must be that one)
    prompt: str | None = None  # VQA prompt (default: the one the exits were trained with)
    caption_prompt: str | None = None
    scorer: str = "lavis"  # VQA accuracy rule (evaluation.metrics.vqa.SCORERS)
    hf_baseline: bool = True  # live: time HF generate() beside the engine's full model (else engine only)
    decode: str = "greedy"  # live: greedy exits, or "speculative": the exits draft, a full pass verifies
    draft_len: int = 4  # speculative: most tokens drafted before a verification pass

    def check(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("split", self.split, SPLITS)
        check_choice("kv_policy", self.kv_policy, tuple(POLICIES))
        for task in self.tasks:
            check_choice("task", task, tuple(S.TASK_ROWS))
        if self.batch_size < 1 or (self.max_rows is not None and self.max_rows < 1):
            raise FreeBenchError(
                f"batch size and max rows must be >= 1, got {self.batch_size}, {self.max_rows}"
            )
        if self.repeats < 1 or self.warmup < 0:
            raise FreeBenchError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if not self.compact and (self.mode == "simulated" or self.kv_policy == "deferred"):
            raise FreeBenchError("--no-compact is for live decoding under the propagate or full policy")
        if not self.thresholds:
            raise FreeBenchError("give at least one threshold")
        check_choice("engine", self.engine, ENGINES)
        if self.engine == "graphs" and self.mode != "live":
            raise FreeBenchError("--engine graphs decodes live (--mode live)")
        if self.engine == "graphs" and self.kv_policy not in GRAPH_POLICIES:
            raise FreeBenchError(
                f"--engine graphs runs the kv policies {list(GRAPH_POLICIES)}, not {self.kv_policy!r}"
            )
        check_choice("decode", self.decode, DECODES)
        if self.decode == "speculative" and (self.mode != "live" or self.batch_size != 1
                                             or self.kv_policy != "propagate"):  # fmt: skip
            raise FreeBenchError(
                "--decode speculative decodes live at batch 1 under propagate "
                "(--mode live --batch-size 1 --kv-policy propagate)"
            )
        if self.draft_len < 1:
            raise FreeBenchError(f"--draft-len must be >= 1, got {self.draft_len}")
        if self.perturb is not None:
            from free_bench.data.perturb import parse_spec

            parse_spec(self.perturb)
        from free_bench.evaluation.metrics.vqa import SCORERS
        from free_bench.models.prompts import check_prompts

        check_choice("scorer", self.scorer, SCORERS)
        check_prompts(self.prompts, "--prompt")

    @property
    def prompts(self) -> dict[str, str]:
        return {k: v for k, v in (("vqa", self.prompt), ("caption", self.caption_prompt)) if v is not None}


def load_method(spec: SweepSpec, device: str | None, backbone=None) -> tuple[ExitMethod, str]:
    """The exits named by `spec.exits`, or an untrained rule (static, mue) on their backbone: loaded
    from disk (on `spec.backbone` if given, with the prompts they were trained with unless the spec
    names others), or `backbone` when given (it must be the one they were trained on; sweeps that
    share it share its captured decoders and warmed shapes)."""
    from free_bench.evaluation.trained import open_exits, run_record

    cls = get_method(spec.method)
    if cls.rule == "oracle":
        raise FreeBenchError("the oracle is a ceiling over every exit's answer, not a threshold rule: "
                             "read it from `free-bench eval-exits` tables")  # fmt: skip
    record = run_record(spec.exits)
    saved = record["exits"]
    regime = record.get("regime", "none")
    if backbone is not None:
        trained = load_exits(spec.exits, backbone, device=device)
    else:
        trained = open_exits(spec.exits, backbone=spec.backbone, prompts=spec.prompts, device=device, record=record)
    if trained.name == spec.method:
        method = trained
    elif cls.trainable:
        raise FreeBenchError(f"--method {spec.method} but {spec.exits} holds {saved.get('method')} exits")
    else:
        method, regime = cls(trained.backbone, trained.layers), "none"
    if spec.exits_at is not None:
        method = method.restrict(spec.exits_at)
    return method.eval(), regime


_PERTURBED: OrderedDict[tuple[str, str], datasets.Dataset] = OrderedDict()  # (rows, perturbation) -> rows
_PERTURBED_KEEP = 64  # a robustness grid's inputs, reused by each of its methods


def _rows(spec: SweepSpec, split: datasets.Dataset, task: str, shard: tuple[int, int] | None = None) -> datasets.Dataset:
    """The task's rows (first `max_rows`), perturbed after the cut so only the rows used pay for it
    (each row's perturbation is seeded by its own id, so the cut does not change it). Perturbed rows are
    kept in memory for the next sweep of the same rows and perturbation (the robustness grid decodes
    every input with each method: an H200 run at commit 8c2b62a spent 23 s of 123 perturbing the same rows 4 times)."""
    rows = S.TASK_ROWS[task](split)
    rows = rows.select(range(min(spec.max_rows, len(rows)))) if spec.max_rows else rows
    if shard is not None:  # under torchrun: this rank's contiguous share of the rows
        rows = rows.shard(num_shards=shard[1], index=shard[0], contiguous=True)
    if spec.perturb is None:
        return rows
    from free_bench.data.perturb import apply_to_row, parse_spec

    key = (f"{rows._fingerprint}|{spec.split}|{task}|{len(rows)}", spec.perturb)
    if key in _PERTURBED:
        _PERTURBED.move_to_end(key)
        return _PERTURBED[key]
    name, severity = parse_spec(spec.perturb)
    # our own fingerprint, in memory: datasets would otherwise hash the lambda with dill, which
    # disassembles every global it reaches (2-3 s a call on the H200 host's Python 3.12: most of a
    # robustness sweep), and would write a cache file into the shared dataset folder
    label = hashlib.sha256(f"{spec.split}|{task}|{len(rows)}|{spec.perturb}".encode()).hexdigest()[:32]
    perturbed = rows.map(lambda r: apply_to_row(r, name, severity), new_fingerprint=label, keep_in_memory=True,
                         desc=f"perturb {spec.perturb}")  # fmt: skip
    _PERTURBED[key] = perturbed
    while len(_PERTURBED) > _PERTURBED_KEEP:
        _PERTURBED.popitem(last=False)
    return perturbed


def _point_file(out: Path, task: str, threshold: float | str) -> Path:
    """One small JSON per finished point (a parquet write per point would cost more than the point)."""
    return out / "points" / f"{task}__{threshold}.json"


def _write_point(records: list[dict], path: Path, values: list[float], rows: dict[str, list[float]]) -> None:
    """Plain records (validated against SWEEP when gathered): pandas per point would cost more than
    evaluating the point. The per-sample numbers go first, so a point file always has its samples."""
    # no temp file for the samples: the point's JSON, written atomically after them, is what marks the
    # point finished, so a half-written .npy of a killed point is recomputed and overwritten on resume
    with open(path.with_suffix(".samples.npy"), "wb") as f:
        np.save(f, np.array([values] + [rows[k] for k in S.ROW_FIELDS], dtype=np.float64))  # (F, R)
    write_json(records, path)


def _point_files(out: Path) -> list[Path]:
    extras = (".full_ms.json", ".texts.json", ".depths.json")  # beside a point: full-model times, captions, depths
    return sorted(f for f in (out / "points").glob("*__*.json") if not f.name.endswith(extras))


def gather_samples(out: Path) -> pd.DataFrame:
    """Every point's per-sample numbers, keyed like its SWEEP rows (`records.SWEEP_SAMPLES`)."""
    keys = [c.name for c in SWEEP_SAMPLES.columns[:8]]
    frames = []
    for f in _point_files(out):
        npy = f.with_suffix(".samples.npy")
        if not npy.exists():
            continue
        task = f.name.split("__")[0]
        arr = np.load(npy)  # (F, R): value, then S.ROW_FIELDS (points written before a field existed lack it)
        df = pd.DataFrame(dict(zip(("value", *S.ROW_FIELDS), arr, strict=False)))
        for name in S.ROW_FIELDS[len(arr) - 1 :]:
            df[name] = np.nan
        full_ms = f.with_suffix(".full_ms.json")
        if full_ms.exists():  # the baseline the point's measured speedup used: the faster full model
            totals = json.loads(full_ms.read_text())
            faster = "hf_ms" if totals["hf_ms"] < totals["engine_ms"] else "engine_ms"  # NaN hf: not timed
            df["full_latency_ms"] = df[faster]
        else:
            df["full_latency_ms"] = np.nan
        depths = f.with_suffix(".depths.json")  # live points: every token's exit layer, as JSON per sample
        df["exit_layers"] = [json.dumps(d) for d in json.loads(depths.read_text())] if depths.exists() else None
        record = json.loads(f.read_text())[0]
        ids = json.loads((out / "points" / f"{task}.ids.json").read_text())
        frames.append(df.assign(sample_id=ids, batch=df["batch"].astype(int), **{k: record[k] for k in keys}))
    if not frames:
        return pd.DataFrame(columns=SWEEP_SAMPLES.names)
    # beside the schema: `exit_layers`, each live token's exit layer (JSON per sample), for replays
    return SWEEP_SAMPLES.validate(pd.concat(frames, ignore_index=True))[[*SWEEP_SAMPLES.names, "exit_layers"]]


def run_sweep(
    spec: SweepSpec,
    out: Path,
    device: str | None = None,
    progress: bool = True,
    loaded: tuple[ExitMethod, str] | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep into `out`. `loaded`: `load_method(spec, device)`'s result, when a
    caller runs many sweeps of one method (reproduce's robustness grid) and loads it once. `shard`:
    (rank, ranks), this process's contiguous share of the rows (`evaluation.sweep_ranks`).

    A folder holding a sweep made with another spec or other exits (by content) is an error naming
    what differs, unless `overwrite`; one writer at a time (a lock beside `out`)."""
    spec.check()
    out = Path(out)
    check_writable(out)
    with writer_lock(out):
        return _run_sweep(spec, out, device, progress, loaded, overwrite, shard)


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}  # (weights path, size, mtime) -> fingerprint


def exits_fingerprint(exits: str | Path) -> str:
    """What the exits are, by content (config and weights), not by path: a sweep whose exits were
    retrained at the same path is another sweep. Kept per (path, size, mtime) of the weights, so a
    robustness grid's dozens of sweeps of one method hash a BLIP-2-size file once."""
    folder = Path(exits)
    files = [folder / "config.json", folder / "exits.safetensors"]
    for path in files:
        if not path.is_file():
            raise FreeBenchError(f"{folder} holds no trained exits (no {path.name}); run train-exits first")
    stat = files[1].stat()
    key = (str(files[1].resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


def provenance(spec: SweepSpec, shard: tuple[int, int] | None = None) -> dict:
    """Everything that decides a sweep's points: its spec, its exits' fingerprint, its rows' hash and,
    under torchrun, which share of the rows."""
    from free_bench.data.source import ref_hash
    from free_bench.evaluation.trained import data_ref, run_record

    ref = data_ref(run_record(spec.exits), spec.data)
    record = {"spec": json.loads(json.dumps(asdict(spec))), "exits_fingerprint": exits_fingerprint(spec.exits),
              "data": ref, "dataset_hash": ref_hash(ref)}  # fmt: skip
    return record if shard is None else {**record, "shard": list(shard)}


def _run_sweep(spec: SweepSpec, out: Path, device: str | None, progress: bool,
               loaded: tuple[ExitMethod, str] | None, overwrite: bool,
               shard: tuple[int, int] | None = None) -> pd.DataFrame:  # fmt: skip
    saved = out / SPEC_FILE
    wanted = provenance(spec, shard)
    if saved.exists():
        if not overwrite:
            check_same("a sweep", out, read_json(saved), wanted)
        else:
            remove_run(out, SPEC_FILE)
    elif out.exists() and any(out.iterdir()):
        raise FreeBenchError(f"{out} exists and holds no sweep; choose another --out")
    if sweep_finished(spec, out, shard):  # a resumed caller (reproduce) neither reloads the exits nor re-records
        return _finished_table(out)
    wall = {"load": time.perf_counter()}  # where a sweep's wall time goes, beside the timed decoding
    method, regime = loaded if loaded is not None else load_method(spec, device)
    for t in spec.thresholds:  # all validated before any work
        rules.check_threshold(method.rule, t, method.layers)
    if spec.engine == "graphs":
        if method.backbone.device.type != "cuda":
            raise FreeBenchError(
                f"--engine graphs captures CUDA graphs; the sweep runs on {method.backbone.device}"
            )
    ds = load_split(method, spec)
    wall.update(load=time.perf_counter() - wall["load"], rows=0.0, points=0.0)
    write_json(wanted, saved)
    bb, cost = method.backbone, cost_model(method.backbone, method)
    base = {"regime": regime, "kv_policy": spec.kv_policy, "batch_size": spec.batch_size, "split": spec.split,
            "perturbation": spec.perturb or "none", "device": device_name(),
            "engine": spec.engine if spec.mode == "live" else "none",
            "decode": spec.decode if spec.mode == "live" else "none",
            "draft_len": spec.draft_len if spec.decode == "speculative" else 0}  # fmt: skip
    timings = {}

    def scored(task: str) -> dict:  # the rows name the VQA scorer (captions: none)
        return {**base, "scorer": spec.scorer if task == "vqa" else "none"}

    for task in spec.tasks:
        t0 = time.perf_counter()
        rows = _rows(spec, ds, task, shard)
        write_json(S.sample_ids(task, rows), out / "points" / f"{task}.ids.json")
        if task == "caption":  # kept beside the texts: CIDEr can then be scored where Java runs
            refs = dict(zip(S.sample_ids(task, rows), map(list, rows["captions"]), strict=True))
        t1 = time.perf_counter()
        counted = {**scored(task), "n_samples": len(rows)}  # every point of the task decodes these rows
        if spec.mode == "simulated":
            timings[task] = _simulated(spec, method, cost, rows, task, out, counted, progress)
        else:
            timings[task] = _live(spec, method, rows, task, out, counted, progress)
        wall["rows"] += t1 - t0
        wall["points"] += time.perf_counter() - t1
    t0 = time.perf_counter()
    df = SWEEP.validate(pd.DataFrame([r for f in _point_files(out) for r in
                                      point_n_samples(json.loads(f.read_text()), f.with_suffix(".samples.npy"))]))  # fmt: skip
    write_parquet(df, out / "sweep.parquet", SWEEP)
    write_parquet(gather_samples(out), out / "samples.parquet", SWEEP_SAMPLES)
    if "caption" in spec.tasks:
        write_parquet(gather_captions(out, refs), out / CAPTIONS)
    wall["tables"] = time.perf_counter() - t0
    # how the graphs engine replayed its steps (`GraphDecoder.step_mode`: conditional nodes where torch has them)
    step = {"graph_step": graph_step_mode()} if spec.engine == "graphs" and spec.mode == "live" else {}
    write_json({"spec": asdict(spec), "backbone": bb.spec, "prompts": bb.prompts, "scorer": spec.scorer,
                "data": wanted["data"], "dataset_hash": wanted["dataset_hash"], "timings": timings, "device": device_name(),
                **step, "wall_s": {k: round(v, 3) for k, v in wall.items()}}, out / "manifest.json")  # fmt: skip
    return df


def _finished_table(out: Path) -> pd.DataFrame:
    """A finished sweep's table; one written before `n_samples` existed gains it (counted from its
    samples table) and is rewritten, so the tables a caller copies carry it too."""
    df = pd.read_parquet(out / "sweep.parquet")
    if "n_samples" not in df.columns:
        df = with_n_samples(df, pd.read_parquet(out / "samples.parquet"))
        write_parquet(df, out / "sweep.parquet", SWEEP)
    return SWEEP.validate(df)


def sweep_finished(spec: SweepSpec, out: Path, shard: tuple[int, int] | None = None) -> bool:
    """Every point of `spec` is on disk and the tables after them (the manifest is written last)."""
    keys = ["full", *spec.thresholds]
    points = [_point_file(out, task, k) for task in spec.tasks for k in keys]
    saved = out / SPEC_FILE
    return (
        (out / "manifest.json").exists()
        and saved.exists()
        and all(p.exists() for p in points)
        and not differences(read_json(saved), provenance(spec, shard))
    )


def load_split(method: ExitMethod, spec: SweepSpec) -> datasets.Dataset:
    """The split to decode: from `spec.data`, else from the data the exits were trained beside."""
    from free_bench.evaluation.trained import run_data, run_record

    return run_data(run_record(spec.exits), spec.data, progress=False).split(spec.split, need="the sweep")


def _rows_out(
    base: dict, method: str, threshold: float, task: str, quality: dict, summary: dict, **timing
) -> list[dict]:
    nan = float("nan")
    defaults = {"measured_speedup": nan, "latency_ms_median": nan, "latency_ms_p90": nan, "timer": "none"}
    common = {
        **base,
        "method": method,
        "threshold": float(threshold),
        "task": task,
        **summary,
        **defaults,
        **timing,
    }
    return [{**common, "metric": m, "value": v} for m, v in quality.items()]


def _simulated(spec, method, cost, rows, task, out, base, progress) -> dict:
    t0 = time.perf_counter()
    rec = S.record(method, rows, task, batch_size=max(spec.batch_size, 32))
    recorded = time.perf_counter() - t0
    tok, memo, scored = method.backbone.tokenizer, {}, {}
    answers = list(rows["answers"]) if task == "vqa" else None

    def texts(seqs: list[tuple[int, ...]]) -> list[str]:
        out = []
        for s in seqs:
            if s not in memo:
                memo[s] = tok.decode(list(s), skip_special_tokens=True).strip()
            out.append(memo[s])
        return out

    def quality(seqs: list[tuple[int, ...]]) -> tuple[dict[str, float], list[float]]:
        """VQA accuracy memoised per (row, answer): a row has few distinct answers across thresholds."""
        if answers is None:
            return S.quality(task, rows, texts(seqs), spec.scorer)
        values = [scored.get((r, s)) for r, s in enumerate(seqs)]
        for r, v in enumerate(values):
            if v is None:
                values[r] = scored[(r, seqs[r])] = vqa_accuracy(texts([seqs[r]])[0], answers[r], scorer=spec.scorer)
        return {"vqa_accuracy": sum(values) / len(values)}, values

    points = [(None, "full")] + [(t, t) for t in spec.thresholds]
    for t, key in tqdm(points, desc=f"simulated {method.name} {task}", disable=not progress):
        path = _point_file(out, task, key)
        if path.exists():
            continue
        seqs, res = S.simulated_outputs(method, rec, t, cost, spec.kv_policy, len(rows))
        name, threshold = (method.name, t) if t is not None else ("full", method.backbone.num_layers)
        metrics, values = quality(seqs)
        if task == "caption":
            save_texts(path, texts(seqs))
        _write_point(_rows_out(base, name, threshold, task, metrics, res.summary()), path, values, res.rows)
    total = time.perf_counter() - t0
    return {"teacher_forced_s": rec.tf_seconds, "record_s": recorded, "sweep_s": total,
            "thresholds": len(spec.thresholds), "sweep_over_teacher_forced": total / rec.tf_seconds,
            "sweep_over_record": total / recorded}  # fmt: skip


def _live(spec, method, rows, task, out, base, progress) -> dict:
    """Every threshold not yet on disk, decoded batch by batch with the full model, the prefix (and HF
    `generate()`) timed once per batch beside them (`live_points`); the full model's own point comes
    from those decodes. Points are written when the sweep ends, the full model's first: a killed sweep
    redoes the thresholds it had not written."""
    bb = method.backbone
    todo = [t for t in spec.thresholds if not _point_file(out, task, t).exists()]
    need_full = not _point_file(out, task, "full").exists()
    if todo or need_full:
        points, full_out, full = S.live_points(bb, method if todo else None, rows, task, spec.batch_size, todo,
                                               spec.kv_policy, spec.warmup, spec.repeats, compact=spec.compact,
                                               engine=spec.engine, hf=spec.hf_baseline, decode=spec.decode,
                                               draft_len=spec.draft_len, progress=progress)  # fmt: skip
        if need_full:
            _write_live_point(out, task, "full", ("full", bb.num_layers), full_out, full, base, rows)
        for t in todo:
            _write_live_point(out, task, t, (method.name, t), points[t], full, base, rows)
    return {f.name.split("__")[1].removesuffix(".full_ms.json"): json.loads(f.read_text())
            for f in sorted((out / "points").glob(f"{task}__*.full_ms.json"))}  # fmt: skip


def _write_live_point(
    out, task, key, named: tuple[str, float], res: S.Outputs, full: dict, base, rows
) -> None:
    """One live point's rows, samples, full-model times (and captions) on disk; `named`: (method, threshold)."""
    path = _point_file(out, task, key)
    name, threshold = named
    lat = pd.Series(res.latencies_ms)
    faster = full["hf_ms"] if full["hf_ms"] < full["engine_ms"] else full["engine_ms"]  # NaN hf: not timed
    metrics, values = S.quality(task, rows, res.texts, base.get("scorer", "lavis"))
    if task == "caption":
        save_texts(path, res.texts)
    write_json(full, path.with_suffix(".full_ms.json"))  # the full model timed beside this point
    write_json(res.depths, path.with_suffix(".depths.json"))  # each token's exit layer: what a replay needs
    _write_point(_rows_out(base, name, threshold, task, metrics, res.summary(),
                           measured_speedup=faster / sum(res.latencies_ms), latency_ms_median=lat.median(),
                           latency_ms_p90=lat.quantile(0.9), timer=res.timer), path, values, res.rows)  # fmt: skip
