"""Comparing two pytest-benchmark JSON files: reading and checking them, pairing benchmarks by name,
judging each pair, and summarising the machines they ran on.

No printing and no argument parsing here (`free_bench.cli.regress` does both); bad input
raises `FreeBenchError`, which names the file and the fault.

A pair is judged on what the benchmark records in `extra_info`: `measured_speedup` (or, with
`Tolerances.speedup_key`, `expected_speedup`) may drop by at most `Tolerances.speedup` (relative), the quality under `Tolerances.quality_key` by at most
`Tolerances.quality` (absolute, on its [0, 1] scale), and the median time may rise by at most
`Tolerances.time` when that is set. A drop of exactly the tolerance passes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from free_bench.core.errors import FreeBenchError

OK, SPEEDUP, QUALITY, TIME, NEW, MISSING = (
    "ok",
    "SPEEDUP REGRESSION",
    "QUALITY REGRESSION",
    "TIME REGRESSION",
    "new",
    "missing",
)
_EPS = 1e-9  # a drop of exactly the tolerance passes, whatever the float rounding


@dataclass(frozen=True)
class Tolerances:
    """How far a current benchmark may fall behind its baseline before it counts as a regression."""

    speedup: float = 0.05  # largest relative drop of the judged speedup
    # which speedup is judged: measured_speedup (wall clock, on a quiet machine) or expected_speedup
    # (layer counts: deterministic, what a shared CI machine can gate on while it reports the clock)
    speedup_key: str = "measured_speedup"
    quality: float = 0.005  # largest absolute drop of the quality, on its [0, 1] scale
    quality_key: str = "quality"  # extra_info key holding the quality value
    time: float | None = None  # largest relative rise of the median time; None: times not judged


# -- reading ----------------------------------------------------------------------------------------


@dataclass
class BenchFile:
    path: Path
    benchmarks: dict[str, dict[str, Any]]  # name -> the benchmark entry
    machine_info: dict[str, Any]
    datetime: str | None
    commit: str | None


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
    machine_info = doc.get("machine_info")
    commit_info = doc.get("commit_info")
    commit = commit_info.get("id") if isinstance(commit_info, dict) else None
    return BenchFile(
        path=path,
        benchmarks=benchmarks,
        machine_info=machine_info if isinstance(machine_info, dict) else {},
        datetime=doc.get("datetime") if isinstance(doc.get("datetime"), str) else None,
        commit=commit if isinstance(commit, str) else None,
    )


def _is_number(v: Any) -> bool:
    """True for an int or float (a bool is not a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _extra_number(f: BenchFile, name: str, key: str) -> float | None:
    """A numeric extra_info value; None when absent, null or NaN; an error when of another type."""
    v = f.benchmarks[name].get("extra_info", {}).get(key)
    if v is None:
        return None
    if not _is_number(v):
        raise FreeBenchError(f"{f.path}: benchmark {name!r}: extra_info.{key} is not a number ({v!r})")
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
    """One benchmark name: its verdicts, notes, and the values of both sides and their changes."""

    name: str
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return " + ".join(self.verdicts) if self.verdicts else OK

    @property
    def failed(self) -> bool:
        return any(v in (SPEEDUP, QUALITY, TIME) for v in self.verdicts)


def _change(base: float | None, cur: float | None) -> float | None:
    """Relative change cur / base - 1; None when either is unknown or base is not positive."""
    if base is None or cur is None or base <= 0:
        return None
    return cur / base - 1


def compare(base: BenchFile, cur: BenchFile, tol: Tolerances) -> list[Row]:
    """One row per benchmark name in either file: baseline order first, then the new ones."""
    names = list(base.benchmarks) + [n for n in cur.benchmarks if n not in base.benchmarks]
    qkey = tol.quality_key
    rows = []
    for name in names:
        row = Row(name)
        sides = [(side, f) for side, f in (("baseline", base), ("current", cur)) if name in f.benchmarks]
        for side, f in sides:
            extra = f.benchmarks[name].get("extra_info", {})
            metric = extra.get("quality_metric")
            row.values.update(
                {
                    f"{side}_median_ms": float(f.benchmarks[name]["stats"]["median"]) * 1e3,
                    f"{side}_measured_speedup": _extra_number(f, name, "measured_speedup"),
                    f"{side}_expected_speedup": _extra_number(f, name, "expected_speedup"),
                    f"{side}_quality": _extra_number(f, name, qkey),
                    f"{side}_quality_metric": str(metric) if metric is not None else None,
                    f"{side}_mean_exit_layer": _extra_number(f, name, "mean_exit_layer"),
                }
            )
        rows.append(row)
        if name not in cur.benchmarks:
            row.verdicts.append(MISSING)
            row.notes.append("in the baseline only (not judged)")
            continue
        if name not in base.benchmarks:
            row.verdicts.append(NEW)
            row.notes.append("in the current file only (not judged)")
            continue
        _judge(row, tol)
    return rows


def _judge(row: Row, tol: Tolerances) -> None:
    """Fill in the changes of a benchmark found in both files, and its verdicts and notes."""
    v = row.values
    v["time_change"] = _change(v["baseline_median_ms"], v["current_median_ms"])
    if tol.time is not None and v["time_change"] is not None:
        if v["time_change"] > tol.time + _EPS:
            row.verdicts.append(TIME)

    key = tol.speedup_key
    b, c = v[f"baseline_{key}"], v[f"current_{key}"]
    v["speedup_change"] = _change(b, c)
    if b is None and c is None:
        row.notes.append(f"no {key}: compared on time only")
    elif b is None or c is None:
        row.notes.append(
            f"{key} only in the {'current' if b is None else 'baseline'} file: compared on time only"
        )
    elif b <= 0:
        row.notes.append(f"baseline {key} {b:g} is not positive: speedup not judged")
    elif v["speedup_change"] < -(tol.speedup + _EPS):
        row.verdicts.append(SPEEDUP)

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
