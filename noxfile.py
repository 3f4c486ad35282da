"""free-bench's nox entry points. pip/virtualenv only: uv ignores the local torch wheel and pulls CUDA builds.

nox -s tests                      # default suite (CPU, tiny models, integration on smoke), then the
                                  # smoke bench against results/smoke/bench_baseline.json (CI runs this)
nox -s lint                       # ruff, then the import-layer contract (import-linter)
nox -s reproduce                  # the main job: profile gpu with CUDA, else cpu
nox -s reproduce -- --profile smoke
nox -s bench                      # pytest-benchmark suite in tests/benchmarks/
nox -s bench -- --compare         # ... then `free-bench regress` against results/<profile>/bench_baseline.json
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def _install(session: nox.Session, extras: str = "") -> None:
    # torch first with its exact pin, so nothing later can pull a CUDA build.
    session.install("torch==2.13.0")
    session.install("-e", f".{extras}")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default suite on CPU: unit + integration (smoke profile), GPU tests skipped without CUDA;
    the whole suite (what CI runs) ends with the smoke bench in regression mode.

    nox -s tests
    nox -s tests -- --no-bench           # without the bench regression check
    nox -s tests -- -k scenes -x         # any other pytest arguments pass through (and skip the bench)
    """
    _install(session, "[dev]")
    args = list(session.posargs)
    bench = not args
    if "--no-bench" in args:
        args.remove("--no-bench")
        bench = False
    session.run(
        "pytest", "tests/unit", "tests/integration", "tests/gpu", *args
    )
    if bench:
        _smoke_bench_regression(session)


# CI's regression check: the smoke bench on a shared 2-core machine of either CPU vendor. It gates on
# what is deterministic there: the quality and the layer-count (expected) speedup, with room for the
# near-ties another CPU's rounding can flip (5 points = 3 of 64 questions; 5 % of the expected
# speedup). The measured wall-clock speedups are printed in the table beside them, not gated: a shared
# machine's clock says nothing dependable about a change.
CI_SPEEDUP_TOLERANCE, CI_QUALITY_TOLERANCE = "0.05", "0.05"


def _smoke_bench_regression(session: nox.Session) -> None:
    """Every exit method at its fixed operating point (tests/benchmarks/bench_methods.py), compared
    with the committed smoke baseline by `free-bench regress` (a regression fails the run)."""
    baseline = _bench_baseline(session, "smoke")
    current = Path(".benchmarks") / "ci_smoke.json"
    current.parent.mkdir(parents=True, exist_ok=True)
    session.run("pytest", "tests/benchmarks/bench_methods.py", "-o", "python_files=bench_*.py", "--benchmark-only",
                "-p", "no:cacheprovider", "-q", "--benchmark-json", str(current))  # fmt: skip
    session.run("free-bench", "regress", str(baseline), str(current), "--speedup-key", "expected_speedup",
                "--tolerance", CI_SPEEDUP_TOLERANCE, "--quality-tolerance", CI_QUALITY_TOLERANCE)  # fmt: skip


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, analyses, tests and this file; then import-linter's contracts
    (pyproject.toml): each layer imports only the layers below it, analyses/ never imports torch.

    nox -s lint
    nox -s lint -- --fix
    """
    _install(session, "[dev]")  # import-linter reads the installed package's import graph
    session.run("ruff", "check", "free_bench", "analyses", "tests", "noxfile.py", *session.posargs)
    session.run("lint-imports", "--no-cache")


@nox.session(python=PYTHON)
def reproduce(session: nox.Session) -> None:
    """The main job, end to end into results/<profile>/ (finished stages are reused).

    nox -s reproduce                        # gpu profile if CUDA is available, else cpu
    nox -s reproduce -- --profile smoke     # smoke | cpu | gpu
    nox -s reproduce -- --fresh             # recompute every stage
    """
    _install(session)
    session.run("free-bench", "reproduce", *session.posargs)


def _take_option(args: list[str], name: str) -> str | None:
    """Remove `name VALUE` or `name=VALUE` from `args`; return VALUE (None when absent)."""
    for i, arg in enumerate(args):
        if arg == name:
            if i + 1 >= len(args):
                raise ValueError(f"{name} needs a value")
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def _bench_baseline(session: nox.Session, profile: str) -> Path:
    """results/<profile>/bench_baseline.json, or an error saying how to record it."""
    baseline = Path("results") / profile / "bench_baseline.json"
    if not baseline.is_file():
        session.error(
            f"no benchmark baseline at {baseline}; record one on a quiet machine with "
            f"`nox -s bench -- --benchmark-json {baseline}` and commit it"
        )
    return baseline


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """pytest-benchmark suite (tests/benchmarks/); timings, not pass/fail tests.

    nox -s bench
    nox -s bench -- --benchmark-json out/bench.json
    nox -s bench -- --compare                      # then `free-bench regress` against the baseline
    nox -s bench -- --compare --profile gpu --tolerance 0.25

    --compare writes the run to .benchmarks/current.json (or the --benchmark-json path given) and
    compares it with results/<profile>/bench_baseline.json (profile: gpu with CUDA, else smoke), failing
    on a measured_speedup drop beyond --tolerance (default 0.05) or a quality drop beyond
    --quality-tolerance (default 0.005 = 0.5 points). A new baseline is a plain run:
    nox -s bench -- --benchmark-json results/<profile>/bench_baseline.json
    """
    args = list(session.posargs)
    compare = "--compare" in args
    if compare:
        args.remove("--compare")
        try:
            profile = _take_option(args, "--profile")
            regress_opts = [
                (opt, value)
                for opt in ("--tolerance", "--quality-tolerance", "--time-tolerance")
                if (value := _take_option(args, opt)) is not None
            ]
            current = _take_option(args, "--benchmark-json") or ".benchmarks/current.json"
        except ValueError as e:
            session.error(str(e))
        if profile is not None:  # fail before installing anything
            baseline = _bench_baseline(session, profile)
    _install(session, "[dev]")
    if compare:
        if profile is None:
            cuda = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
            baseline = _bench_baseline(session, "gpu" if "True" in str(cuda) else "smoke")
        Path(current).parent.mkdir(parents=True, exist_ok=True)
        args += ["--benchmark-json", current]
    for i, arg in enumerate(args):  # pytest-benchmark does not make the folder of its JSON file
        out = args[i + 1] if arg == "--benchmark-json" and i + 1 < len(args) else arg.partition("=")[2]
        if arg.startswith("--benchmark-json") and out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
    session.run(
        "pytest",
        "tests/benchmarks",
        "-o",
        "python_files=bench_*.py",
        "--benchmark-only",
        *args,
        success_codes=[0, 5],  # 5: no benchmark collected (none exists for this machine yet)
    )
    if compare:
        session.run(
            "free-bench", "regress", str(baseline), current, *[x for pair in regress_opts for x in pair]
        )
