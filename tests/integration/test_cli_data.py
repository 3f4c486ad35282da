"""`free-bench data` end to end on the smoke profile, and its bad-input behaviour."""

from __future__ import annotations

import subprocess
import sys

import datasets
import pytest

pytestmark = pytest.mark.integration


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "free_bench", *args], capture_output=True, text=True, cwd=cwd
    )


def test_data_smoke_writes_dataset_and_counts(tmp_path):
    out = tmp_path / "scenes"
    res = _cli("data", "--dataset", "scenes", "--profile", "smoke", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "question_type" in res.stdout and "test_novel" in res.stdout and "total" in res.stdout
    ds = datasets.load_from_disk(str(out))
    assert set(ds) == {"train", "exit_train", "unlabeled", "val", "test", "test_novel"}
    assert (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "mnist"], "invalid choice: 'mnist' (choose from 'scenes', 'coco-karpathy', 'vqav2')"),
        (["--profile", "huge"], "invalid choice: 'huge' (choose from 'smoke', 'cpu', 'gpu')"),
        (["--dataset", "vqav2"], "--images"),
    ],
)
def test_bad_input_clear_message_nothing_written(tmp_path, args, needle):
    out = tmp_path / "o"
    res = _cli("data", *args, "--out", str(out))
    assert res.returncode == 2
    assert needle in res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_every_subcommand_has_help_with_example():
    res = _cli("data", "--help")
    assert res.returncode == 0 and "example:" in res.stdout
