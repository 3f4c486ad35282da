"""The CLI as a user meets it: fast help, --version, flags refused at parse time with the valid values
listed, the cache location, and loading that never trains."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from free_bench.cli.app import build_parser, load_commands
from free_bench.cli.registry import COMMANDS

COMMAND_NAMES = ["data", "pretrain", "export-backbone", "train-exits", "eval-exits", "sweep", "score-captions",
                 "regress", "reproduce", "calibrate", "attack"]  # fmt: skip


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "free_bench", *args], capture_output=True, text=True)
    return res, time.perf_counter() - t0


def test_every_command_is_registered() -> None:
    load_commands()
    assert sorted(COMMANDS) == sorted(COMMAND_NAMES)
    build_parser()


@pytest.mark.parametrize("command", [None, *COMMAND_NAMES])
def test_help_is_fast(command: str | None) -> None:
    """Every --help in under 2 s (about 0.15 s on a 2-core CPU): parsing imports no torch, no pandas."""
    res, seconds = _cli(*([command] if command else []), "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: free-bench" in res.stdout
    assert seconds < 2.0, f"free-bench {command or ''} --help took {seconds:.2f} s"


def test_version() -> None:
    from free_bench import __version__

    res, _ = _cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"free-bench {__version__}"


@pytest.mark.parametrize(
    "args, valid",
    [
        (["train-exits", "--method", "nope", "--backbone", "b", "--regime", "semi", "--out", "o"], "'deebert'"),
        (["train-exits", "--method", "free", "--backbone", "b", "--regime", "weak", "--out", "o"], "'unsupervised'"),
        (["sweep", "--method", "free", "--exits", "e", "--split", "train", "--mode", "live",
          "--thresholds", "0.5", "--out", "o"], "'test_novel'"),  # fmt: skip
        (["sweep", "--method", "free", "--exits", "e", "--split", "val", "--mode", "fast",
          "--thresholds", "0.5", "--out", "o"], "'simulated'"),  # fmt: skip
        (["sweep", "--method", "free", "--exits", "e", "--split", "val", "--mode", "live", "--engine", "jit",
          "--thresholds", "0.5", "--out", "o"], "'graphs'"),  # fmt: skip
        (["sweep", "--method", "free", "--exits", "e", "--split", "val", "--mode", "live", "--kv-policy", "x",
          "--thresholds", "0.5", "--out", "o"], "'deferred'"),  # fmt: skip
        (["sweep", "--method", "free", "--exits", "e", "--split", "val", "--mode", "live", "--perturb", "fog:3",
          "--thresholds", "0.5", "--out", "o"], "gaussian_noise"),  # fmt: skip
        (["reproduce", "--profile", "huge"], "'smoke'"),
        (["pretrain", "--profile", "huge"], "'gpu'"),
        (["data", "--dataset", "mnist", "--out", "o"], "'vqav2'"),
        (["eval-exits", "--exits", "e", "--out", "o", "--device", "mps"], "cpu, cuda, cuda:N"),
        (["eval-exits", "--exits", "e", "--out", "o", "--max-rows", "0"], "must be >= 1"),
        (["sweep", "--method", "free", "--exits", "e", "--split", "val", "--mode", "live", "--repeats", "0",
          "--thresholds", "0.5", "--out", "o"], "must be >= 1"),  # fmt: skip
        (["sweep", "--method", "free", "--exits", "e", "--split", "val", "--mode", "live", "--warmup", "-1",
          "--thresholds", "0.5", "--out", "o"], "must be >= 0"),  # fmt: skip
    ],
)
def test_bad_flags_are_refused_at_once_with_the_valid_values(tmp_path: Path, args: list[str], valid: str) -> None:
    """Checked by the parser, before torch: exit 2, the valid values named, nothing written."""
    res = subprocess.run([sys.executable, "-m", "free_bench", *args], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert valid in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_cache_defaults_to_the_user_cache_never_the_working_directory(monkeypatch, tmp_path: Path) -> None:
    from free_bench.config import cache_dir

    monkeypatch.delenv("FREE_BENCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cache_dir() == (tmp_path / "home" / ".cache" / "free-bench").resolve()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == (tmp_path / "xdg" / "free-bench").resolve()
    monkeypatch.setenv("FREE_BENCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == (tmp_path / "mine").resolve()


def test_loading_an_embedded_backbone_never_trains(monkeypatch, tmp_path: Path) -> None:
    """Not cached: a clear error naming the command that makes it, and nothing written."""
    from free_bench import load_backbone
    from free_bench.core.errors import FreeBenchError

    monkeypatch.setenv("FREE_BENCH_CACHE", str(tmp_path))
    with pytest.raises(FreeBenchError, match=r"free-bench pretrain --profile cpu --seed 1"):
        load_backbone("embedded:cpu", seed=1)
    with pytest.raises(FreeBenchError, match=r"free-bench pretrain --profile smoke --lm t5`"):
        load_backbone("embedded:smoke-t5")
    assert list(tmp_path.iterdir()) == []
