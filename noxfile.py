"""Sessions of free-bench. pip/virtualenv only: uv ignores the local torch wheel and pulls CUDA builds.

nox -s tests                      # default suite (CPU, tiny models, integration on smoke)
nox -s tests -- --slow            # also the slower CPU tests
nox -s lint                       # ruff
nox -s reproduce                  # the main job: profile gpu with CUDA, else cpu
nox -s reproduce -- --profile smoke
nox -s bench                      # pytest-benchmark suite in tests/benchmarks/
"""

from __future__ import annotations

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
    """The default suite on CPU: unit + integration (smoke profile), GPU tests skipped without CUDA.

    nox -s tests
    nox -s tests -- --slow               # include tests marked slow
    nox -s tests -- -k scenes -x         # any other pytest arguments pass through
    """
    _install(session, "[dev]")
    args = list(session.posargs)
    marks = "not slow"
    if "--slow" in args:
        args.remove("--slow")
        marks = ""
    session.run(
        "pytest", "tests/unit", "tests/integration", "tests/gpu", *(["-m", marks] if marks else []), *args
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, analyses, tests and this file.

    nox -s lint
    nox -s lint -- --fix
    """
    session.install("ruff>=0.6")
    session.run("ruff", "check", "free_bench", "analyses", "tests", "noxfile.py", *session.posargs)


@nox.session(python=PYTHON)
def reproduce(session: nox.Session) -> None:
    """The main job, end to end into results/<profile>/ (finished stages are reused).

    nox -s reproduce                        # gpu profile if CUDA is available, else cpu
    nox -s reproduce -- --profile smoke     # smoke | cpu | gpu
    nox -s reproduce -- --fresh             # recompute every stage
    """
    _install(session)
    session.run("free-bench", "reproduce", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """pytest-benchmark suite (tests/benchmarks/); timings, not pass/fail tests.

    nox -s bench
    nox -s bench -- --benchmark-json out/bench.json
    """
    _install(session, "[dev]")
    session.run(
        "pytest",
        "tests/benchmarks",
        "-o",
        "python_files=bench_*.py",
        "--benchmark-only",
        *session.posargs,
        success_codes=[0, 5],  # 5: no benchmark collected (none exists for this machine yet)
    )
