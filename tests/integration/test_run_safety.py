"""Nothing lost, nothing stale: run folders are reused or resumed only with the settings that made them,
one writer at a time, never deleting what the suite did not write (the real CLI on the smoke profile)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from clitools import cli

pytestmark = pytest.mark.integration

TRAIN = ["train-exits", "--method", "deebert", "--backbone", "embedded:smoke", "--regime", "semi",
         "--exits", "2,4", "--device", "cpu", "--tasks", "vqa"]  # fmt: skip


@pytest.fixture(scope="module")
def env(smoke_env: dict) -> dict:
    return smoke_env


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_data_never_deletes_an_unrelated_folder(env, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    res = cli("data", "--dataset", "scenes", "--profile", "smoke", "--out", str(mine), env=env)
    assert res.returncode == 2 and "is not a dataset written by free-bench" in res.stderr
    assert (mine / "thesis.tex").read_text() == "years of work"
    res = cli("data", "--dataset", "scenes", "--profile", "smoke", "--out", str(mine), "--overwrite", env=env)
    assert res.returncode == 2 and (mine / "thesis.tex").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp folder, no lock left


def test_data_reuses_only_the_same_settings(env, tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    _ok(cli("data", "--profile", "smoke", "--out", str(out), env=env))
    again = _ok(cli("data", "--profile", "smoke", "--out", str(out), env=env))
    assert "reused" in again.stderr
    other = cli("data", "--profile", "smoke", "--seed", "1", "--out", str(out), env=env)
    assert other.returncode == 2 and "seed: 0 recorded, 1 asked" in other.stderr
    _ok(cli("data", "--profile", "smoke", "--seed", "1", "--out", str(out), "--overwrite", env=env))
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 1


def test_train_exits_reuses_only_the_same_settings(env, tmp_path: Path) -> None:
    out = tmp_path / "exits"
    _ok(cli(*TRAIN, "--steps", "2", "--out", str(out), env=env))
    same = _ok(cli(*TRAIN, "--steps", "2", "--out", str(out), env=env))
    assert "reused" in same.stderr
    other = cli(*TRAIN, "--steps", "3", "--out", str(out), env=env)
    assert other.returncode == 2 and "config.train.steps: 2 recorded, 3 asked" in other.stderr
    seed = cli(*TRAIN, "--steps", "2", "--seed", "4", "--out", str(out), env=env)
    assert seed.returncode == 2 and "seeds" in seed.stderr
    _ok(cli(*TRAIN, "--steps", "3", "--out", str(out), "--overwrite", env=env))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["train"]["steps"] == 3 and len(manifest["loss_log"]) == 3


def test_a_resume_state_from_other_settings_is_refused(env, tmp_path: Path) -> None:
    """A leftover OUT.state resumes only the run that made it: another regime, step count or method is
    an error naming the fields, not a silent resume of the old checkpoint."""
    out = tmp_path / "exits"
    state = tmp_path / "exits.state"
    state.mkdir()
    recorded = {"config": {"method": "free", "regime": "unsupervised"}, "seeds": [0], "dataset_hash": "x"}
    (state / "provenance.json").write_text(json.dumps(recorded))
    res = cli(*TRAIN, "--steps", "2", "--out", str(out), env=env)
    assert res.returncode == 2 and "config.method" in res.stderr and "config.regime" in res.stderr
    assert not out.exists() and (state / "provenance.json").exists()
    _ok(cli(*TRAIN, "--steps", "2", "--out", str(out), "--overwrite", env=env))
    assert not state.exists() and (out / "manifest.json").exists()


def test_one_writer_per_out(env, tmp_path: Path) -> None:
    from free_bench.core.runs import writer_lock

    out = tmp_path / "exits"
    with writer_lock(out):  # another run holds the folder
        res = cli(*TRAIN, "--steps", "2", "--out", str(out), env=env)
    assert res.returncode == 2 and "another free-bench run is writing" in res.stderr
    assert not out.exists()


def test_a_sweep_knows_its_exits_by_content(env, tmp_path: Path) -> None:
    """Exits retrained at the same path make another sweep: the finished one is not reused."""
    exits, sweep = tmp_path / "exits", tmp_path / "sweep"
    _ok(cli(*TRAIN, "--steps", "2", "--out", str(exits), env=env))
    args = ["sweep", "--method", "deebert", "--exits", str(exits), "--split", "val", "--mode", "simulated",
            "--thresholds", "1.0", "--max-rows", "8", "--out", str(sweep), "--device", "cpu"]  # fmt: skip
    _ok(cli(*args, env=env))
    _ok(cli(*TRAIN, "--steps", "3", "--out", str(exits), "--overwrite", env=env))
    res = cli(*args, env=env)
    assert res.returncode == 2 and "exits_fingerprint" in res.stderr
    _ok(cli(*args, "--overwrite", env=env))


def test_out_is_checked_before_any_work(env, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = cli(*TRAIN, "--steps", "2", "--out", str(blocker / "exits"), env=env)
    assert res.returncode == 2 and "is a file, not a folder" in res.stderr
    res = cli(*TRAIN, "--steps", "2", "--out", str(blocker), env=env)
    assert res.returncode == 2 and "is a file, not a folder" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_killed_publish_leaves_no_finished_looking_run(env, tmp_path: Path, monkeypatch) -> None:
    """Weights, config and manifest appear together: a failure while writing the manifest leaves no
    OUT at all (the resume state stays), and the rerun trains and finishes it."""
    from free_bench.core import records
    from free_bench.training.run import train_exit_run

    monkeypatch.setenv("FREE_BENCH_CACHE", env["FREE_BENCH_CACHE"])
    out = tmp_path / "exits"
    kw = {"method": "deebert", "backbone": "embedded:smoke", "regime": "semi", "exits": "2,4", "steps": 2,
          "tasks": ("vqa",), "device": "cpu"}  # fmt: skip
    real = records.Manifest.write

    def killed(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(records.Manifest, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        train_exit_run(out, **kw)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["exits.state"]
    monkeypatch.setattr(records.Manifest, "write", real)
    manifest = train_exit_run(out, **kw)
    assert (out / "config.json").exists() and manifest["config"]["train"]["steps"] == 2
