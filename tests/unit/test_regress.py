"""`free-bench regress`: two pytest-benchmark JSON files compared on speedup and quality (synthetic files)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from free_bench.cli import main

EXIT = "test_static_exit[cpu-propagate]"
FULL = "test_runner_vs_hf[1]"


def _bench(name: str, median_s: float, **extra) -> dict:
    return {
        "group": None,
        "name": name,
        "fullname": f"tests/benchmarks/bench_engine.py::{name}",
        "params": {},
        "stats": {"min": median_s * 0.9, "max": median_s * 1.2, "mean": median_s, "median": median_s},
        "extra_info": extra,
    }


def _doc(*benchmarks: dict, cpu: str = "AMD EPYC", device: str = "x86_64") -> dict:
    for b in benchmarks:
        b["extra_info"].setdefault(
            "machine", {"device_name": device, "torch_version": "2.13.0+cpu", "dtype": "float32"}
        )
    return {
        "machine_info": {"node": "vm", "machine": "x86_64", "cpu": {"brand_raw": cpu, "count": 2}},
        "commit_info": {"id": "0123456789abcdef"},
        "benchmarks": list(benchmarks),
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": "5.3.1",
    }


def _baseline() -> dict:
    return _doc(
        _bench(
            EXIT,
            0.050,
            measured_speedup=1.80,
            expected_speedup=1.70,
            mean_exit_layer=16.0,
            quality=0.700,
            quality_metric="vqa_accuracy",
        ),
        _bench(FULL, 0.150),  # a full-model timing: no measured_speedup
    )


def _write(path: Path, doc: dict | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _run(tmp_path: Path, current: dict | str, *opts: str, baseline: dict | str | None = None) -> int:
    base = _write(tmp_path / "base.json", _baseline() if baseline is None else baseline)
    cur = _write(tmp_path / "cur.json", current)
    return main(["regress", str(base), str(cur), *opts])


def _with(name: str, **extra) -> dict:
    """The baseline with `extra` replacing values in `name`'s extra_info."""
    doc = copy.deepcopy(_baseline())
    (b,) = [b for b in doc["benchmarks"] if b["name"] == name]
    b["extra_info"].update(extra)
    return doc


def _row(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(name)]
    return line


def test_identical_files_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _baseline()) == 0
    out, err = capsys.readouterr()
    assert _row(out, EXIT).endswith(" ok") and _row(out, FULL).endswith(" ok")
    assert "vqa_accuracy" in _row(out, EXIT)
    assert f"{FULL}: no measured_speedup: compared on time only" in out
    assert "2 compared, 0 regressed, 0 new, 0 missing" in out
    assert "AMD EPYC x2" in out and "warning" not in err


def test_speedup_drop_beyond_tolerance_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.80 * 0.90)) == 1
    out, err = capsys.readouterr()
    assert "SPEEDUP REGRESSION" in _row(out, EXIT) and "-10.0%" in _row(out, EXIT)
    assert _row(out, FULL).endswith(" ok")
    assert EXIT in err and "1 regressed" in out


def test_speedup_drop_within_tolerance_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.80 * 0.97)) == 0
    assert _row(capsys.readouterr().out, EXIT).endswith(" ok")
    # a tighter tolerance turns the same 3 % drop into a failure, a wider one lets 10 % through
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.80 * 0.97), "--tolerance", "0.02") == 1
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.80 * 0.90), "--tolerance", "0.25") == 0


def test_speedup_rise_and_exact_tolerance_pass(tmp_path: Path) -> None:
    assert _run(tmp_path, _with(EXIT, measured_speedup=2.5)) == 0
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.80 * 0.95)) == 0


@pytest.mark.parametrize(("drop_points", "code"), [(0.6, 1), (0.4, 0)])
def test_quality_drop(tmp_path: Path, capsys: pytest.CaptureFixture, drop_points: float, code: int) -> None:
    assert _run(tmp_path, _with(EXIT, quality=0.700 - drop_points / 100)) == code
    row = _row(capsys.readouterr().out, EXIT)
    assert f"-{drop_points:.2f} pt" in row
    assert ("QUALITY REGRESSION" in row) == (code == 1)


def test_quality_key_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, cur = _with(EXIT, acc=0.5), _with(EXIT, acc=0.49)
    assert _run(tmp_path, cur, baseline=base) == 0  # default key `quality` unchanged
    assert _run(tmp_path, cur, "--quality-key", "acc", baseline=base) == 1
    assert _run(tmp_path, cur, "--quality-key", "acc", "--quality-tolerance", "0.02", baseline=base) == 0


def test_both_regressions_in_one_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.0, quality=0.5)) == 1
    assert "SPEEDUP REGRESSION + QUALITY REGRESSION" in _row(capsys.readouterr().out, EXIT)


def test_new_and_missing_are_listed_not_failed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cur = _baseline()
    cur["benchmarks"] = [b for b in cur["benchmarks"] if b["name"] != FULL]
    cur["benchmarks"].append(_bench("test_new_method[cpu]", 0.01, measured_speedup=0.5))
    assert _run(tmp_path, _doc(*cur["benchmarks"])) == 0
    out = capsys.readouterr().out
    assert _row(out, FULL).endswith(" missing")
    assert _row(out, "test_new_method[cpu]").endswith(" new")
    assert "1 compared, 0 regressed, 1 new, 1 missing" in out


def test_speedup_missing_on_one_side_is_time_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cur = _baseline()
    del cur["benchmarks"][0]["extra_info"]["measured_speedup"]
    assert _run(tmp_path, cur) == 0
    assert "measured_speedup only in the baseline file: compared on time only" in capsys.readouterr().out


def test_time_tolerance_is_opt_in(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    slow = _baseline()
    slow["benchmarks"][1]["stats"]["median"] = 0.150 * 1.5
    assert _run(tmp_path, slow) == 0
    assert "+50.0%" in _row(capsys.readouterr().out, FULL)
    assert _run(tmp_path, slow, "--time-tolerance", "0.2") == 1
    assert "TIME REGRESSION" in _row(capsys.readouterr().out, FULL)


def test_machine_difference_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cur = _baseline()
    cur["machine_info"]["cpu"]["brand_raw"] = "Intel Xeon"
    assert _run(tmp_path, cur) == 0
    out, err = capsys.readouterr()
    assert "Intel Xeon x2" in out and "AMD EPYC x2" in out
    assert "warning: the machines differ (cpu)" in err


def test_out_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_csv = tmp_path / "sub" / "table.csv"
    assert _run(tmp_path, _with(EXIT, measured_speedup=1.5), "--out", str(out_csv)) == 1
    rows = {r["name"]: r for r in csv.DictReader(out_csv.open())}
    assert rows[EXIT]["verdict"] == "SPEEDUP REGRESSION"
    assert float(rows[EXIT]["current_measured_speedup"]) == 1.5
    assert rows[EXIT]["quality_metric"] == "vqa_accuracy"
    assert rows[FULL]["baseline_measured_speedup"] == "" and "time only" in rows[FULL]["notes"]
    assert [p.name for p in out_csv.parent.iterdir()] == ["table.csv"]  # no temp file left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        (json.dumps({"machine_info": {}}), "no top-level 'benchmarks' list"),
        (json.dumps([1, 2]), "no top-level 'benchmarks' list"),
        (json.dumps({"benchmarks": [{"stats": {"median": 1.0}}]}), "benchmarks[0] has no name"),
        (json.dumps({"benchmarks": [{"name": "a", "stats": {}}]}), "has no numeric stats.median"),
        (json.dumps(_with(EXIT, measured_speedup="fast")), "extra_info.measured_speedup is not a number"),
        (json.dumps(_doc(_bench("a", 1.0), _bench("a", 2.0))), "appears twice"),
    ],
)
def test_malformed_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str
) -> None:
    out_csv = tmp_path / "table.csv"
    assert _run(tmp_path, content, "--out", str(out_csv)) == 2
    out, err = capsys.readouterr()
    assert str(tmp_path / "cur.json") in err and message in err
    assert not out_csv.exists()


def test_malformed_or_missing_baseline_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _baseline(), baseline="") == 2
    assert str(tmp_path / "base.json") in capsys.readouterr().err
    assert main(["regress", str(tmp_path / "nope.json"), str(tmp_path / "cur.json")]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err


def test_negative_tolerance_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _baseline(), "--tolerance", "-0.1") == 2
    assert "--tolerance must be >= 0" in capsys.readouterr().err


def test_judging_the_expected_speedup_reports_the_clock_without_gating_it(tmp_path, capsys):
    """CI's mode on a shared machine: a halved measured speedup passes while the layer-count estimate
    holds, and a drop of the estimate itself fails; the measured value is still in the table."""
    noisy = _baseline()
    noisy["benchmarks"][0]["extra_info"]["measured_speedup"] = 0.90
    assert _run(tmp_path, noisy, "--speedup-key", "expected_speedup") == 0
    assert "0.9" in capsys.readouterr().out
    assert _run(tmp_path, noisy) == 1  # the default still judges the clock
    fewer = _baseline()
    fewer["benchmarks"][0]["extra_info"]["expected_speedup"] = 1.50
    assert _run(tmp_path, fewer, "--speedup-key", "expected_speedup") == 1


# -- the floor and lists of points (engine benchmarks) --------------------------------------------------

FLOOR = "test_graphs_engine_near_the_floor"
BATCHES = "test_graphs_batches_save_what_the_batch_expects"


def _point(method: str, batch: int, speedup: float, ratio: float, **more) -> dict:
    # `threshold` is a float: a measurement, so it takes no part in the point's name
    return {"method": method, "batch_size": batch, "threshold": 0.37 * batch, "measured_speedup": speedup,
            "expected_batch_speedup": speedup / ratio, "measured_over_batch_expected": ratio, **more}  # fmt: skip


def _engine_doc(floor: float = 2.0, points: list[dict] | None = None) -> dict:
    if points is None:
        points = [_point("static", 1, 1.6, 0.99), _point("deebert", 8, 0.76, 0.78)]
    return _doc(
        _bench(FLOOR, 0.050, measured_speedup=1.62, expected_speedup=1.66, full_over_floor=floor),
        _bench(BATCHES, 0.110, batches=points, ratio_per_round=[0.79, 0.78]),  # a list of numbers: no points
    )


def _point_row(method: str, batch: int) -> str:
    return f"{BATCHES}/batches[batch_size={batch},method={method}]"


@pytest.mark.parametrize(("rise", "code"), [(0.06, 1), (0.04, 0), (-0.5, 0)])
def test_floor_rise_beyond_the_tolerance_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture, rise: float, code: int
) -> None:
    cur = _engine_doc(floor=2.0 * (1 + rise))
    assert _run(tmp_path, cur, "--tolerance", "0.05", baseline=_engine_doc()) == code
    row = _row(capsys.readouterr().out, FLOOR)
    assert "2.000" in row and f"{2.0 * (1 + rise):.3f}" in row and f"{rise * 100:+.1f}%" in row
    assert ("FLOOR REGRESSION" in row) == (code == 1)


def test_points_are_rows_named_by_their_identity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cur = _engine_doc(points=[{**_point("deebert", 8, 0.76, 0.78), "threshold": 9.9},  # order and floats
                              _point("static", 1, 1.6, 0.99)])  # fmt: skip
    assert _run(tmp_path, cur, baseline=_engine_doc()) == 0
    out = capsys.readouterr().out
    names = [ln.split()[0] for ln in out.splitlines() if ln.startswith("test_")]
    assert names == [FLOOR, BATCHES, _point_row("static", 1), _point_row("deebert", 8)]
    assert _row(out, _point_row("deebert", 8)).endswith(" ok") and "4 compared, 0 regressed" in out


@pytest.mark.parametrize(
    ("change", "verdict"),
    [({"measured_speedup": 0.76 * 0.9}, "SPEEDUP REGRESSION"), ({"measured_over_batch_expected": 0.78 * 0.9},
                                                                 "RATIO REGRESSION")],
)  # fmt: skip
def test_a_batch_point_that_drops_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, verdict: str
) -> None:
    cur = _engine_doc(points=[_point("static", 1, 1.6, 0.99), {**_point("deebert", 8, 0.76, 0.78), **change}])
    assert _run(tmp_path, cur, baseline=_engine_doc()) == 1
    out, err = capsys.readouterr()
    assert verdict in _row(out, _point_row("deebert", 8)) and "-10.0%" in _row(out, _point_row("deebert", 8))
    assert _row(out, _point_row("static", 1)).endswith(" ok") and _point_row("deebert", 8) in err


def test_a_point_on_one_side_is_new_or_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cur = _engine_doc(points=[_point("deebert", 8, 0.1, 0.1), _point("deebert", 32, 0.5, 0.5)])
    assert _run(tmp_path, cur, baseline=_engine_doc()) == 1  # the paired point still fails
    out = capsys.readouterr().out
    assert _row(out, _point_row("deebert", 32)).endswith(" new")
    assert _row(out, _point_row("static", 1)).endswith(" missing")
    assert "3 compared, 1 regressed, 1 new, 1 missing" in out
    assert _run(tmp_path, cur, baseline=cur) == 0


def test_clock_ratios_are_noted_not_gated_when_the_expected_speedup_is_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cur = _engine_doc(floor=3.0, points=[_point("static", 1, 1.6, 0.5), _point("deebert", 8, 0.76, 0.78)])
    assert _run(tmp_path, cur, "--speedup-key", "expected_speedup", baseline=_engine_doc()) == 0
    out = capsys.readouterr().out
    assert "full_over_floor +50.0% (clock: not gated while expected_speedup is judged)" in out
    assert _run(tmp_path, cur, baseline=_engine_doc()) == 1


def test_old_files_have_no_point_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, _baseline()) == 0
    out = capsys.readouterr().out
    assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("test_")] == [EXIT, FULL]
    assert "floor" not in out.split("\n\n")[1].splitlines()[0]  # no floor column without a floor


def test_floor_and_ratios_in_the_csv(tmp_path: Path) -> None:
    out_csv = tmp_path / "table.csv"
    assert _run(tmp_path, _engine_doc(floor=2.5), "--out", str(out_csv), baseline=_engine_doc()) == 1
    rows = {r["name"]: r for r in csv.DictReader(out_csv.open())}
    assert rows[FLOOR]["verdict"] == "FLOOR REGRESSION" and float(rows[FLOOR]["full_over_floor_change"]) == 0.25
    assert float(rows[_point_row("deebert", 8)]["current_measured_over_batch_expected"]) == 0.78


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([_point("static", 1, 1.6, 0.99), _point("static", 1, 1.5, 0.9)], "[0] and [1] have the same identity"),
        ([_point("static", 1, 1.6, 0.99), 3], "extra_info.batches mixes objects and other values"),
        ([{**_point("static", 1, 1.6, 0.99), "full_over_floor": "low"}], "batches[0].full_over_floor is not a number"),
    ],
)
def test_malformed_points_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, points: list, message: str) -> None:
    assert _run(tmp_path, _engine_doc(points=points), baseline=_engine_doc()) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cur.json") in err and message in err
