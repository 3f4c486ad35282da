"""Shared by the CLI integration tests: one pretrained smoke backbone per test run, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m free_bench ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "free_bench", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory) -> dict:
    """An environment whose FREE_BENCH_CACHE holds the pretrained smoke backbone (read-only to tests)."""
    cache = tmp_path_factory.mktemp("smoke-cache")
    env = {**os.environ, "FREE_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    res = cli("pretrain", "--profile", "smoke", "--device", "cpu", "--no-eval", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return env
