"""`free-bench regress BASELINE.json CURRENT.json`: compare two pytest-benchmark JSON files.

Entries are paired by name: each benchmark, and each point of a list of objects in a benchmark's
`extra_info` (`batches`, `steps`, `decoupled`, ...), named `<benchmark>/<key>[<identity>]` from the
point's str, int and bool fields. A pair is compared on what it records rather than on raw times
alone (times move with the machine, speedups and quality should not):

- `measured_speedup` (full-model time / early-exit time): a SPEEDUP REGRESSION when it drops by
  more than `--tolerance` relative to the baseline (default 0.05: 5 %);
- the quality under `--quality-key` (default `quality`), named by `quality_metric` (for example
  `vqa_accuracy`), on a [0, 1] scale, so 1 point = 0.01 and the default `--quality-tolerance` 0.005
  is 0.5 points: a QUALITY REGRESSION when it drops by more than that (absolute);
- `full_over_floor` (the full model's ms per token over the weight-read floor; lower is better): a
  FLOOR REGRESSION when it rises by more than `--tolerance`;
- `measured_over_batch_expected`, `decode_measured_over_expected`, `measured_over_expected_with_prefix`
  (a measured speedup over its expectation): a RATIO REGRESSION when one drops by more than
  `--tolerance`. These two are clock quantities: with `--speedup-key expected_speedup` they are
  shown and noted, not gated;
- `expected_speedup` and `mean_exit_layer` are shown for reading, never judged.

A benchmark without `measured_speedup` (a full-model timing) is compared on its median time only,
and the row says so; that comparison fails only when `--time-tolerance` is given. Entries found
in one file only are listed as `new` / `missing` and do not fail the run (a renamed or added
benchmark is not a regression; the baseline is refreshed when the suite changes). Both files'
machines (CPU, devices, torch) are printed, with a warning (not a failure) when they differ.

Exit status: 0 when nothing regressed, 1 on any regression, 2 on a missing or malformed file.
The comparison itself lives in `free_bench.evaluation.regress`; this module parses, prints and writes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from free_bench.cli.registry import command
from free_bench.core.errors import FreeBenchError
from free_bench.evaluation.regress import (
    FLOOR_KEY,
    MISSING,
    NEW,
    RATIO_KEYS,
    Row,
    Tolerances,
    compare,
    load_bench_file,
    machine_summary,
)

CSV_COLUMNS = (
    "name",
    "verdict",
    "baseline_median_ms",
    "current_median_ms",
    "time_change",
    "baseline_measured_speedup",
    "current_measured_speedup",
    "speedup_change",
    "baseline_expected_speedup",
    "current_expected_speedup",
    "quality_metric",
    "baseline_quality",
    "current_quality",
    "quality_change",
    "baseline_mean_exit_layer",
    "current_mean_exit_layer",
    *(c for key in (FLOOR_KEY, *RATIO_KEYS) for c in (f"baseline_{key}", f"current_{key}", f"{key}_change")),
    "notes",
)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("baseline", type=Path, help="pytest-benchmark JSON to compare against")
    p.add_argument("current", type=Path, help="pytest-benchmark JSON of the run under test")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest allowed relative drop of measured_speedup and of the measured-over-expected ratios, "
        "and rise of full_over_floor (default 0.05 = 5%%)",
    )
    p.add_argument(
        "--speedup-key",
        default="measured_speedup",
        choices=["measured_speedup", "expected_speedup"],
        help="which speedup --tolerance judges: the clock (default) or the layer-count estimate, which is "
        "deterministic; CI on a shared machine judges expected_speedup and reports the measured one",
    )
    p.add_argument(
        "--quality-tolerance",
        type=float,
        default=0.005,
        help="largest allowed absolute drop of the quality, on its [0, 1] scale (default 0.005 = 0.5 points)",
    )
    p.add_argument(
        "--quality-key",
        default="quality",
        help="extra_info key holding the quality value (default: quality; its name is in quality_metric)",
    )
    p.add_argument(
        "--time-tolerance",
        type=float,
        default=None,
        help="also fail when a median time rises by more than this fraction (default: times not judged)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")


# -- output -----------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def _first(v: dict[str, Any], key: str) -> float | None:
    """The current value of `key`, else the baseline's (a missing benchmark has only that)."""
    cur = v.get(f"current_{key}")
    return cur if cur is not None else v.get(f"baseline_{key}")


def _worst_ratio_change(v: dict[str, Any]) -> float | None:
    """The largest drop among the measured-over-expected ratios both sides have (None: none has)."""
    changes = [v[f"{k}_change"] for k in RATIO_KEYS if v.get(f"{k}_change") is not None]
    return min(changes) if changes else None


def render_table(rows: list[Row]) -> str:
    """A fixed-width text table; '-' where a value is unknown or does not apply.

    The speedup columns always show; expected speedup, the quality columns, the exit layer, the floor
    ratio (`full_over_floor`) and the worst change of the measured-over-expected ratios only when some
    row has a value for them."""
    header = (
        "benchmark",
        "base ms",
        "cur ms",
        "time",
        "base x",
        "cur x",
        "speedup",
        "expected x",
        "quality metric",
        "base q",
        "cur q",
        "quality",
        "exit layer",
        "base floor",
        "cur floor",
        "floor",
        "vs expected",
        "verdict",
    )
    lines = [header]
    for r in rows:
        v = r.values
        qc = v.get("quality_change")
        metric = (
            v.get("quality_metric") or v.get("current_quality_metric") or v.get("baseline_quality_metric")
        )
        lines.append(
            (
                r.name,
                _fmt(v.get("baseline_median_ms"), ".2f"),
                _fmt(v.get("current_median_ms"), ".2f"),
                _pct(v.get("time_change")),
                _fmt(v.get("baseline_measured_speedup"), ".3f"),
                _fmt(v.get("current_measured_speedup"), ".3f"),
                _pct(v.get("speedup_change")),
                _fmt(_first(v, "expected_speedup"), ".3f"),
                metric or "-",
                _fmt(v.get("baseline_quality"), ".4f"),
                _fmt(v.get("current_quality"), ".4f"),
                "-" if qc is None else f"{qc * 100:+.2f} pt",
                _fmt(_first(v, "mean_exit_layer"), ".2f"),
                _fmt(v.get(f"baseline_{FLOOR_KEY}"), ".3f"),
                _fmt(v.get(f"current_{FLOOR_KEY}"), ".3f"),
                _pct(v.get(f"{FLOOR_KEY}_change")),
                _pct(_worst_ratio_change(v)),
                r.verdict,
            )
        )
    optional = {"expected x", "quality metric", "base q", "cur q", "quality", "exit layer", "base floor",
                "cur floor", "floor", "vs expected"}  # fmt: skip
    keep = [i for i, h in enumerate(header) if h not in optional or any(ln[i] != "-" for ln in lines[1:])]
    left = {i for i, h in enumerate(header) if h in ("benchmark", "quality metric", "verdict")}
    lines = [tuple(ln[i] for i in keep) for ln in lines]
    left = {j for j, i in enumerate(keep) if i in left}  # text columns; numbers right-aligned
    widths = [max(len(line[i]) for line in lines) for i in range(len(keep))]

    def fmt_line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [fmt_line(lines[0]), "  ".join("-" * w for w in widths)]
    out += [fmt_line(line) for line in lines[1:]]
    return "\n".join(out)


def write_csv(rows: list[Row], path: Path) -> None:
    from free_bench.core.records import atomic_path

    with atomic_path(path) as tmp:
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in rows:
                v = r.values
                record = {k: v.get(k) for k in CSV_COLUMNS}
                record["quality_metric"] = (
                    v.get("quality_metric")
                    or v.get("current_quality_metric")
                    or v.get("baseline_quality_metric")
                )
                record.update(name=r.name, verdict=r.verdict, notes="; ".join(r.notes))
                w.writerow({k: "" if x is None else x for k, x in record.items()})


def run(args: argparse.Namespace) -> int:
    for opt in ("tolerance", "quality_tolerance", "time_tolerance"):
        value = getattr(args, opt)
        if value is not None and not (value >= 0):
            raise FreeBenchError(f"--{opt.replace('_', '-')} must be >= 0, got {value}")
    base, cur = load_bench_file(args.baseline), load_bench_file(args.current)
    tol = Tolerances(
        speedup=args.tolerance,
        quality=args.quality_tolerance,
        quality_key=args.quality_key,
        time=args.time_tolerance,
        speedup_key=args.speedup_key,
    )
    rows = compare(base, cur, tol)  # raises on a malformed value before anything is written

    machines = {}
    for label, f in (("baseline", base), ("current", cur)):
        m = machines[label] = machine_summary(f)
        stamp = ", ".join(x for x in (f.datetime, f.commit and f"commit {f.commit[:10]}") if x)
        print(f"{label + ':':10}{f.path}" + (f"  ({stamp})" if stamp else ""))
        print(f"{'':10}cpu {m['cpu']} | devices {m['devices']} | torch {m['torch']}")
    differ = [k for k in ("cpu", "devices", "torch") if machines["baseline"][k] != machines["current"][k]]
    if differ:
        print(
            f"warning: the machines differ ({', '.join(differ)}): times are not comparable and "
            "speedups may move; not a failure",
            file=sys.stderr,
        )
    print()
    print(render_table(rows) if rows else "(no benchmarks in either file)")
    noted = [r for r in rows if r.notes]
    if noted:
        print("\nnotes:")
        for r in noted:
            print(f"  {r.name}: {'; '.join(r.notes)}")

    failed = [r for r in rows if r.failed]
    judged = sum(1 for r in rows if NEW not in r.verdicts and MISSING not in r.verdicts)
    new = sum(1 for r in rows if NEW in r.verdicts)
    missing = sum(1 for r in rows if MISSING in r.verdicts)
    clock = "" if tol.clock else " (not gated while expected_speedup is judged)"
    limits = (f"speedup -{args.tolerance * 100:g}%, measured/expected -{args.tolerance * 100:g}% and floor "
              f"+{args.tolerance * 100:g}%{clock}, quality -{args.quality_tolerance * 100:g} pt")  # fmt: skip
    if args.time_tolerance is not None:
        limits += f", time +{args.time_tolerance * 100:g}%"
    print(
        f"\n{judged} compared, {len(failed)} regressed, {new} new, {missing} missing (tolerances: {limits})"
    )
    if args.out is not None:
        write_csv(rows, args.out)
        print(f"wrote {args.out}")
    if failed:
        print(
            "free-bench regress: regression in " + ", ".join(f"{r.name} ({r.verdict})" for r in failed),
            file=sys.stderr,
        )
        return 1
    return 0


command(
    "regress",
    "Compare two pytest-benchmark JSON files on speedups and quality; exit 1 on a regression.",
    "free-bench regress results/smoke/bench_baseline.json .benchmarks/current.json --tolerance 0.05",
    _add_args,
    run,
)
