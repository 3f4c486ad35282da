"""The CLI as the integration tests call it: `python -m free_bench ARGS` in a subprocess."""

from __future__ import annotations

import subprocess
import sys


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "free_bench", *args], capture_output=True, text=True, env=env
    )
