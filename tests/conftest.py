"""Shared fixtures: tiny random-init BLIP-2 backbones (built from config, nothing downloaded).

Also collects `tests/benchmarks/bench_*.py`, but only when pytest is pointed at that folder (or a
file in it), so the default `pytest` run never picks benchmarks up.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2

BENCH_DIR = Path(__file__).parent / "benchmarks"

# Seeds whose tiny models greedy-decode varied tokens (not one repeated id) for the test inputs.
OPT_SEED = 1
T5_SEED = 1


@pytest.fixture
def single_thread():
    """Run torch on one thread: tiny-model ops are latency-bound, and OpenMP workers spinning
    against other load on a 2-core box make them 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_opt_backbone() -> Backbone:
    """BLIP-2 with a 4-layer OPT (hidden 32, vocab 100), fp32 CPU, eval mode. Treat as read-only."""
    return from_hf(build_tiny_blip2("opt", seed=OPT_SEED))


@pytest.fixture(scope="session")
def tiny_t5_backbone() -> Backbone:
    """BLIP-2 with a 3+3-layer T5 (d_model 32, vocab 100), fp32 CPU, eval mode. Treat as read-only."""
    return from_hf(build_tiny_blip2("t5", seed=T5_SEED))


@pytest.fixture(params=["opt", "t5"])
def tiny_backbone(request: pytest.FixtureRequest) -> Backbone:
    """Each tiny backbone in turn."""
    return request.getfixturevalue(f"tiny_{request.param}_backbone")


def _benchmarks_requested(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == BENCH_DIR or BENCH_DIR in path.parents:
            return True
    return False


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    """Collect bench_*.py modules (not matched by python_files) when benchmarks were asked for."""
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and BENCH_DIR in file_path.parents
        and not parent.session.isinitpath(file_path)  # explicit file args are collected by pytest itself
        and not any(fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files"))  # so is
        # a bench_*.py that `-o python_files=bench_*.py` matches: collecting it here too ran it twice
        and _benchmarks_requested(parent.config)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
