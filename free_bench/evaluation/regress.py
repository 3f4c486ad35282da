"""Comparing two pytest-benchmark JSON files: reading and checking them, pairing entries by name,
judging each pair, and summarising the machines they ran on.

No printing and no argument parsing here (`free_bench.cli.regress` does both); bad input
raises `FreeBenchError`, which names the file and the fault.

An entry is a benchmark, or one point of a list of objects in a benchmark's `extra_info` (the engine
benchmarks record one per method x batch, variant, ...): the point is named
`<benchmark>/<key>[<identity>]`, its identity being its str, int and bool fields sorted by key (floats,
such as a bisected threshold, are measurements), or its position `#i` when it has none. A pair is
judged on what the entry records: `measured_speedup` (or, with `Tolerances.speedup_key`,
`expected_speedup`) may drop by at most `Tolerances.speedup` (relative), the quality under
`Tolerances.quality_key` by at most `Tolerances.quality` (absolute, on its [0, 1] scale), and the
median time (benchmarks only) may rise by at most `Tolerances.time` when that is set. Two clock
quantities are held to the speedup tolerance too: `full_over_floor` (the full model's time per token
over the weight-read floor: lower is better) may rise by at most it, and each of `RATIO_KEYS` (a
measured speedup over its expectation) may drop by at most it; they are gated only while the measured
speedup is (judging `expected_speedup` means the clock is not trusted), and noted otherwise. A change
of exactly the tolerance passes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from free_bench.core.errors import FreeBenchError

OK, NEW, MISSING = "ok", "new", "missing"
SPEEDUP, QUALITY, TIME = "SPEEDUP REGRESSION", "QUALITY REGRESSION", "TIME REGRESSION"
FLOOR, RATIO = "FLOOR REGRESSION", "RATIO REGRESSION"
FAILURES = (SPEEDUP, QUALITY, TIME, FLOOR, RATIO)
FLOOR_KEY = "full_over_floor"  # full model ms per token / weight-read floor ms per token: lower is better
# measured speedup over an expectation of it (the batch's layer count, the decode phase's, the one with
# the prefix priced in): a drop means the engine saves less of what the exits skip
RATIO_KEYS = ("measured_over_batch_expected", "decode_measured_over_expected",
              "measured_over_expected_with_prefix")  # fmt: skip
_EPS = 1e-9  # a change of exactly the tolerance passes, whatever the float rounding


@dataclass(frozen=True)
class Tolerances:
    """How far a current benchmark may fall behind its baseline before it counts as a regression."""

    speedup: float = 0.05  # largest relative drop of the judged speedup (and of the clock ratios)
    # which speedup is judged: measured_speedup (wall clock, on a quiet machine) or expected_speedup
    # (layer counts: deterministic, what a shared CI machine can gate on while it reports the clock)
    speedup_key: str = "measured_speedup"
    quality: float = 0.005  # largest absolute drop of the quality, on its [0, 1] scale
    quality_key: str = "quality"  # extra_info key holding the quality value
    time: float | None = None  # largest relative rise of the median time; None: times not judged

    @property
    def clock(self) -> bool:
        """Whether wall-clock quantities (the floor ratio, measured-over-expected ratios) are gated."""
        return self.speedup_key == "measured_speedup"


# -- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What one row compares: a benchmark's extra_info, or one point of a list in it."""

    benchmark: str  # the benchmark it belongs to
    where: str  # for messages: "benchmark 'x': extra_info" or "benchmark 'x': extra_info.batches[3]"
    values: dict[str, Any]
    median_s: float | None  # benchmarks only: points carry no time of their own


@dataclass
class BenchFile:
    path: Path
    benchmarks: dict[str, dict[str, Any]]  # name -> the benchmark entry
    machine_info: dict[str, Any]
    datetime: str | None
    commit: str | None
    entries: dict[str, Entry]  # row name -> what it compares: the benchmarks, then their points


def load_bench_file(path: Path) -> BenchFile:
    """Read and check a pytest-benchmark JSON file; FreeBenchError names the file and the fault."""
    if not path.is_file():
        raise FreeBenchError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FreeBenchError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise FreeBenchError(f"{path}: not a pytest-benchmark file (no top-level 'benchmarks' list)")
    benchmarks: dict[str, dict[str, Any]] = {}
    entries: dict[str, Entry] = {}
    for i, b in enumerate(doc["benchmarks"]):
        if not isinstance(b, dict):
            raise FreeBenchError(f"{path}: benchmarks[{i}] is not an object")
        name = b.get("name")
        if not isinstance(name, str) or not name:
            raise FreeBenchError(f"{path}: benchmarks[{i}] has no name")
        if name in benchmarks:
            raise FreeBenchError(f"{path}: benchmark {name!r} appears twice")
        stats = b.get("stats")
        if not isinstance(stats, dict) or not _is_number(stats.get("median")):
            raise FreeBenchError(f"{path}: benchmark {name!r} has no numeric stats.median")
        extra = b.get("extra_info", {})
        if not isinstance(extra, dict):
            raise FreeBenchError(f"{path}: benchmark {name!r} has an extra_info that is not an object")
        benchmarks[name] = b
        entries[name] = Entry(name, f"benchmark {name!r}: extra_info", extra, float(stats["median"]))
    for name in benchmarks:
        for point, entry in _points(path, name, benchmarks[name].get("extra_info", {})).items():
            if point in entries:
                raise FreeBenchError(f"{path}: {entry.where} would be named {point!r}, which is taken")
            entries[point] = entry
    machine_info = doc.get("machine_info")
    commit_info = doc.get("commit_info")
    commit = commit_info.get("id") if isinstance(commit_info, dict) else None
    return BenchFile(
        path=path,
        benchmarks=benchmarks,
        machine_info=machine_info if isinstance(machine_info, dict) else {},
        datetime=doc.get("datetime") if isinstance(doc.get("datetime"), str) else None,
        commit=commit if isinstance(commit, str) else None,
        entries=entries,
    )


def _points(path: Path, bench: str, extra: dict[str, Any]) -> dict[str, Entry]:
    """The points of every list of objects in `extra`, named by their identity fields."""
    points: dict[str, Entry] = {}
    for key, items in extra.items():
        if not isinstance(items, list) or not any(isinstance(p, dict) for p in items):
            continue  # not a list of points (a list of numbers, say)
        if not all(isinstance(p, dict) for p in items):
            raise FreeBenchError(f"{path}: benchmark {bench!r}: extra_info.{key} mixes objects and other values")
        first: dict[str, int] = {}
        for i, p in enumerate(items):
            ident = sorted((k, v) for k, v in p.items() if isinstance(v, (str, int, bool)))  # bool is an int
            label = ",".join(f"{k}={v}" for k, v in ident) if ident else f"#{i}"
            name = f"{bench}/{key}[{label}]"
            if name in first:
                raise FreeBenchError(
                    f"{path}: benchmark {bench!r}: extra_info.{key}[{first[name]}] and [{i}] have the same "
                    f"identity ({label}): their points cannot be paired"
                )
            first[name] = i
            points[name] = Entry(bench, f"benchmark {bench!r}: extra_info.{key}[{i}]", p, None)
    return points


def _is_number(v: Any) -> bool:
    """True for an int or float (a bool is not a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(f: BenchFile, name: str, key: str) -> float | None:
    """A numeric value of an entry; None when absent, null or NaN; an error when of another type."""
    entry = f.entries[name]
    v = entry.values.get(key)
    if v is None:
        return None
    if not _is_number(v):
        raise FreeBenchError(f"{f.path}: {entry.where}.{key} is not a number ({v!r})")
    return None if math.isnan(v) else float(v)


def machine_summary(f: BenchFile) -> dict[str, str]:
    """CPU (pytest-benchmark's machine_info), accelerator and torch (the benchmarks' extra_info)."""
    mi = f.machine_info
    cpu_info = mi.get("cpu") if isinstance(mi.get("cpu"), dict) else {}
    cpu = cpu_info.get("brand_raw") or mi.get("processor") or mi.get("machine") or "?"
    if cpu_info.get("count"):
        cpu = f"{cpu} x{cpu_info['count']}"
    devices, torches = set(), set()
    if isinstance(mi.get("gpu"), str):
        devices.add(mi["gpu"])
    for b in f.benchmarks.values():
        # `machine` (tests/benchmarks), else any timing record (engine.timing.Timing.as_record())
        states = [s for s in b.get("extra_info", {}).values() if isinstance(s, dict) and "device_name" in s]
        for state in [b["extra_info"]["machine"]] if "machine" in b.get("extra_info", {}) else states:
            if isinstance(state, dict) and state.get("device_name"):
                devices.add(str(state["device_name"]))
            if isinstance(state, dict) and state.get("torch_version"):
                torches.add(str(state["torch_version"]))
    return {
        "cpu": cpu,
        "devices": ", ".join(sorted(devices)) or "?",
        "torch": ", ".join(sorted(torches)) or "?",
    }


# -- comparing --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One entry name: its verdicts, notes, and the values of both sides and their changes."""

    name: str
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return " + ".join(self.verdicts) if self.verdicts else OK

    @property
    def failed(self) -> bool:
        return any(v in FAILURES for v in self.verdicts)


def _change(base: float | None, cur: float | None) -> float | None:
    """Relative change cur / base - 1; None when either is unknown or base is not positive."""
    if base is None or cur is None or base <= 0:
        return None
    return cur / base - 1


def _order(base: BenchFile, cur: BenchFile) -> list[str]:
    """Benchmarks in baseline order, then the new ones; each followed by its points (baseline's first)."""
    benches = list(base.benchmarks) + [n for n in cur.benchmarks if n not in base.benchmarks]
    points: dict[str, dict[str, None]] = {b: {} for b in benches}
    for f in (base, cur):
        for name, entry in f.entries.items():
            if name not in f.benchmarks:
                points[entry.benchmark][name] = None
    return [n for b in benches for n in (b, *points[b])]


def compare(base: BenchFile, cur: BenchFile, tol: Tolerances) -> list[Row]:
    """One row per entry name in either file: benchmarks in baseline order, then the new ones, each
    followed by its points."""
    keys = ("measured_speedup", "expected_speedup", tol.quality_key, "mean_exit_layer", FLOOR_KEY, *RATIO_KEYS)
    rows = []
    for name in _order(base, cur):
        row = Row(name)
        sides = [(side, f) for side, f in (("baseline", base), ("current", cur)) if name in f.entries]
        for side, f in sides:
            entry = f.entries[name]
            metric = entry.values.get("quality_metric")
            row.values[f"{side}_median_ms"] = None if entry.median_s is None else entry.median_s * 1e3
            for key in keys:
                row.values[f"{side}_{'quality' if key == tol.quality_key else key}"] = _number(f, name, key)
            row.values[f"{side}_quality_metric"] = str(metric) if metric is not None else None
        rows.append(row)
        if name not in cur.entries:
            row.verdicts.append(MISSING)
            row.notes.append("in the baseline only (not judged)")
            continue
        if name not in base.entries:
            row.verdicts.append(NEW)
            row.notes.append("in the current file only (not judged)")
            continue
        _judge(row, tol)
    return rows


def _judge(row: Row, tol: Tolerances) -> None:
    """Fill in the changes of an entry found in both files, and its verdicts and notes."""
    v = row.values
    point = v["baseline_median_ms"] is None  # a point has no time of its own to fall back on
    v["time_change"] = _change(v["baseline_median_ms"], v["current_median_ms"])
    if tol.time is not None and v["time_change"] is not None:
        if v["time_change"] > tol.time + _EPS:
            row.verdicts.append(TIME)

    key = tol.speedup_key
    b, c = v[f"baseline_{key}"], v[f"current_{key}"]
    v["speedup_change"] = _change(b, c)
    fallback = "speedup not judged" if point else "compared on time only"
    if b is None and c is None:
        row.notes.append(f"no {key}: {fallback}")
    elif b is None or c is None:
        row.notes.append(f"{key} only in the {'current' if b is None else 'baseline'} file: {fallback}")
    elif b <= 0:
        row.notes.append(f"baseline {key} {b:g} is not positive: speedup not judged")
    elif v["speedup_change"] < -(tol.speedup + _EPS):
        row.verdicts.append(SPEEDUP)

    _judge_clock(row, tol, FLOOR_KEY, FLOOR, lower_is_better=True)
    for ratio in RATIO_KEYS:
        _judge_clock(row, tol, ratio, RATIO, lower_is_better=False)
    _judge_quality(row, tol)


def _judge_clock(row: Row, tol: Tolerances, key: str, verdict: str, lower_is_better: bool) -> None:
    """A wall-clock ratio held to the speedup tolerance: a rise (lower_is_better) or a drop beyond it
    fails while the clock is judged; a regression is noted, not failed, otherwise."""
    v = row.values
    b, c = v[f"baseline_{key}"], v[f"current_{key}"]
    if b is None and c is None:
        return
    change = v[f"{key}_change"] = _change(b, c)
    if b is None or c is None:
        row.notes.append(f"{key} only in the {'current' if b is None else 'baseline'} file: not judged")
    elif change is None:
        row.notes.append(f"baseline {key} {b:g} is not positive: not judged")
    elif (change if lower_is_better else -change) > tol.speedup + _EPS:
        if not tol.clock:
            row.notes.append(f"{key} {change * 100:+.1f}% (clock: not gated while {tol.speedup_key} is judged)")
        else:
            row.notes.append(f"{key} {change * 100:+.1f}%")
            if verdict not in row.verdicts:
                row.verdicts.append(verdict)


def _judge_quality(row: Row, tol: Tolerances) -> None:
    """The quality drop, judged only where both sides name the same metric."""
    v = row.values
    bm, cm = v.pop("baseline_quality_metric"), v.pop("current_quality_metric")
    v["quality_metric"] = cm or bm
    bq, cq = v["baseline_quality"], v["current_quality"]
    v["quality_change"] = None
    if bq is None and cq is None:
        return
    if bq is None or cq is None:
        row.notes.append(
            f"{tol.quality_key} only in the {'current' if bq is None else 'baseline'} file: "
            "quality not judged"
        )
    elif bm != cm:
        row.notes.append(f"quality metrics differ ({bm} vs {cm}): quality not judged")
    else:
        v["quality_change"] = cq - bq
        if cq - bq < -(tol.quality + _EPS):
            row.verdicts.append(QUALITY)
