"""Real checkpoints and real files through the CLI a user runs.

1. The smoke backbone exported as a checkpoint (`export-backbone`) and scenes exported as official
   VQAv2 files (`data --export vqav2`, read back by `data --dataset vqav2`) give exactly what the
   embedded path gives: the same exit weights, the same tokens at every exit, the same exit layers
   and accuracy.
2. A BLIP-2 folder made with transformers alone (random weights, its own byte-level BPE tokenizer)
   and official-format VQAv2 files go through data -> train-exits -> eval-exits -> sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from clitools import cli
from safetensors.torch import load_file


def _ok(res) -> None:
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def exported(smoke_env, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real")
    _ok(cli("export-backbone", "embedded:smoke", str(root / "ckpt"), env=smoke_env))
    _ok(cli("data", "--dataset", "scenes", "--profile", "smoke", "--splits", "exit_train", "test",
            "--export", "vqav2", "--out", str(root / "files"), env=smoke_env))  # fmt: skip
    folders = {"ckpt": root / "ckpt", "root": root}
    for split in ("exit_train", "test"):
        files = root / "files" / split
        _ok(cli("data", "--dataset", "vqav2", "--questions", str(files / "questions.json"), "--annotations",
                str(files / "annotations.json"), "--images", str(files / "images"), "--splits", split,
                "--out", str(root / f"data-{split}"), env=smoke_env))  # fmt: skip
        folders[split] = root / f"data-{split}"
    return folders


def _run(env: dict, out: Path, backbone: str, data: list[str], test_data: list[str]) -> dict:
    _ok(cli("train-exits", "--method", "deebert", "--backbone", backbone, "--regime", "semi", "--tasks", "vqa",
            "--steps", "6", "--profile", "smoke", "--out", str(out / "exits"), "--device", "cpu", *data, env=env))  # fmt: skip
    _ok(cli("eval-exits", "--exits", str(out / "exits"), "--split", "test", "--tasks", "vqa", "--out",
            str(out / "eval"), "--device", "cpu", *test_data, env=env))  # fmt: skip
    _ok(cli("sweep", "--method", "deebert", "--exits", str(out / "exits"), "--split", "test", "--mode", "simulated",
            "--thresholds", "0.5", "1.5", "--out", str(out / "sweep"), "--device", "cpu", *test_data, env=env))  # fmt: skip
    return {
        "weights": load_file(str(out / "exits" / "exits.safetensors")),
        "eval": pd.read_parquet(out / "eval" / "per_exit_test.parquet"),
        "sweep": pd.read_parquet(out / "sweep" / "sweep.parquet"),
        "samples": pd.read_parquet(out / "sweep" / "samples.parquet"),
    }


def test_the_exported_checkpoint_and_files_give_what_the_embedded_path_gives(smoke_env, exported, tmp_path):
    embedded = _run(smoke_env, tmp_path / "embedded", "embedded:smoke", [], [])
    real = _run(smoke_env, tmp_path / "real", str(exported["ckpt"]), ["--data", str(exported["exit_train"])],
                ["--data", str(exported["test"])])  # fmt: skip
    assert embedded["weights"].keys() == real["weights"].keys()
    for key, value in embedded["weights"].items():
        assert (value == real["weights"][key]).all(), key
    cols = ["layer", "exit_kind", "prediction", "confidence", "accuracy"]
    pd.testing.assert_frame_equal(embedded["eval"][cols], real["eval"][cols])  # every exit's token, in order
    keys = ["method", "threshold", "metric", "value", "expected_speedup", "mean_exit_layer", "exit_layer_hist"]
    pd.testing.assert_frame_equal(embedded["sweep"][keys], real["sweep"][keys])
    per = ["threshold", "value", "exit_layer_mean", "cost_layers"]
    pd.testing.assert_frame_equal(embedded["samples"][per], real["samples"][per])
    manifest = json.loads((tmp_path / "real" / "sweep" / "manifest.json").read_text())
    assert manifest["prompts"]["vqa"] == "question: {} answer:" and manifest["scorer"] == "lavis"
    assert manifest["data"] == {"folder": str(exported["test"].resolve())}


@pytest.mark.parametrize(("size", "exits", "depth", "vqa_prompt"), [("tiny-opt", "2,4", 4, "Question: {} Answer:"),
                                                                  ("tiny-t5", "1,2", 3, "Question: {} Short answer:")])  # fmt: skip
def test_a_users_checkpoint_and_official_files(smoke_env, exported, tmp_path, size, exits, depth, vqa_prompt):
    """A BLIP-2 made with transformers alone, its own tokenizer and LAVIS's prompts: through every command
    (FREE's generator exits: an OPT decoder layer, or a T5 block reading the encoder output)."""
    from free_bench.models.random_checkpoint import save_random_blip2

    ckpt = save_random_blip2(tmp_path / "user-blip2", size)
    assert "free_bench" not in (ckpt / "config.json").read_text()
    out = tmp_path / "run"
    data = ["--data", str(exported["exit_train"])]
    _ok(cli("train-exits", "--method", "free", "--backbone", str(ckpt), "--regime", "semi", "--tasks", "vqa",
            "--steps", "3", "--exits", exits, "--out", str(out / "exits"), "--device", "cpu", *data, env=smoke_env))  # fmt: skip
    manifest = json.loads((out / "exits" / "manifest.json").read_text())["config"]
    assert manifest["prompts"] == {"vqa": vqa_prompt, "caption": "a photo of"}
    assert manifest["backbone"]["spec"] == str(ckpt.resolve()) and manifest["data"]["folder"]
    res = cli("sweep", "--method", "free", "--exits", str(out / "exits"), "--split", "test", "--mode", "live",
              "--thresholds", "0.0", "--max-rows", "4", "--warmup", "1", "--out", str(out / "sweep"),
              "--data", str(exported["test"]), "--device", "cpu", "--prompt", "Q: {} A:", env=smoke_env)  # fmt: skip
    _ok(res)
    sweep = pd.read_parquet(out / "sweep" / "sweep.parquet")
    assert set(sweep["method"]) == {"free", "full"} and (sweep["timer"] == "cpu_wall").all()
    samples = pd.read_parquet(out / "sweep" / "samples.parquet")
    for layers, mean in zip(samples["exit_layers"], samples["exit_layer_mean"], strict=True):
        depths = json.loads(layers)  # every generated token's exit layer: what a replay reads
        allowed = {int(k) for k in exits.split(",")} | {depth}  # an exit, or the whole model
        assert depths and set(depths) <= allowed and sum(depths) / len(depths) == pytest.approx(mean)
    assert json.loads((out / "sweep" / "manifest.json").read_text())["prompts"]["vqa"] == "Q: {} A:"


def test_bad_real_inputs_are_named_and_write_nothing(smoke_env, exported, tmp_path):
    exits = tmp_path / "exits"
    cases = [
        (["train-exits", "--method", "deebert", "--backbone", str(tmp_path), "--regime", "semi",
          "--data", str(exported["exit_train"]), "--out", str(exits)], "config.json"),  # not a BLIP-2
        (["train-exits", "--method", "deebert", "--backbone", str(exported["ckpt"]), "--regime", "semi",
          "--out", str(exits)], "--data"),  # a checkpoint without data
        (["train-exits", "--method", "deebert", "--backbone", str(exported["ckpt"]), "--regime", "semi",
          "--data", str(exported["test"]), "--out", str(exits)], "exit_train"),  # the folder lacks the split
        (["train-exits", "--method", "deebert", "--backbone", "embedded:smoke", "--regime", "semi",
          "--prompt", "Question: Answer:", "--out", str(exits)], "{}"),  # no slot for the question
        (["train-exits", "--method", "deebert", "--backbone", "embedded:smoke", "--regime", "semi",
          "--data", str(tmp_path), "--out", str(exits)], "not a data folder"),
    ]  # fmt: skip
    for argv, match in cases:
        res = cli(*argv, "--device", "cpu", env=smoke_env)
        assert res.returncode != 0 and match in res.stderr, (argv, res.stderr[-1500:])
        assert "Traceback" not in res.stderr
        assert not exits.exists() and not Path(str(exits) + ".state").exists()


def test_exits_on_another_backbone_are_refused(smoke_env, exported, tmp_path):
    from free_bench.models.random_checkpoint import save_random_blip2

    other = save_random_blip2(tmp_path / "other", "tiny-opt", seed=1)
    _ok(cli("train-exits", "--method", "deebert", "--backbone", "embedded:smoke", "--regime", "semi", "--tasks",
            "vqa", "--steps", "2", "--out", str(tmp_path / "exits"), "--device", "cpu", env=smoke_env))  # fmt: skip
    res = cli("sweep", "--method", "deebert", "--exits", str(tmp_path / "exits"), "--split", "test", "--mode",
              "simulated", "--thresholds", "1", "--backbone", str(other), "--out", str(tmp_path / "sw"),
              "--device", "cpu", env=smoke_env)  # fmt: skip
    assert res.returncode != 0 and "were trained on backbone" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "sw").exists()


def _torchrun(port: int, *argv: str, env: dict):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return subprocess.run([*cmd, "-m", "free_bench", *argv], capture_output=True, text=True, env=env)


def test_torchrun_trains_on_a_data_folder_and_shards_a_sweep(smoke_env, exported, tmp_path):
    """train-exits under torchrun (2 gloo processes) on a `free-bench data` folder, then a sweep whose
    rows are split across the ranks into one table: the same per-row values as one process, every
    row labelled with its rank."""
    train = ["train-exits", "--method", "deebert", "--backbone", str(exported["ckpt"]), "--regime", "semi",
             "--tasks", "vqa", "--steps", "2", "--profile", "smoke", "--device", "cpu",
             "--data", str(exported["exit_train"]), "--out", str(tmp_path / "exits")]  # fmt: skip
    _ok(_torchrun(29541, *train, env=smoke_env))
    assert json.loads((tmp_path / "exits" / "manifest.json").read_text())["config"]["processes"] == 2
    sweep = ["sweep", "--method", "deebert", "--exits", str(tmp_path / "exits"), "--split", "test", "--mode",
             "simulated", "--thresholds", "0.5", "2.0", "--device", "cpu", "--data", str(exported["test"])]  # fmt: skip
    _ok(cli(*sweep, "--out", str(tmp_path / "one"), env=smoke_env))
    _ok(_torchrun(29542, *sweep, "--out", str(tmp_path / "two"), env=smoke_env))
    one = pd.read_parquet(tmp_path / "one" / "samples.parquet")
    two = pd.read_parquet(tmp_path / "two" / "samples.parquet")
    assert set(two["rank"]) == {0, 1} and len(two) == len(one)
    keys = ["threshold", "sample_id"]
    merged = one.merge(two, on=keys, suffixes=("", "_ranks"))
    assert len(merged) == len(one)
    assert (merged["value"] == merged["value_ranks"]).all()
    assert (merged["exit_layer_mean"] == merged["exit_layer_mean_ranks"]).all()
    table = pd.read_parquet(tmp_path / "two" / "sweep.parquet")
    assert set(table["rank"]) == {0, 1}
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["ranks"] == 2 and len(manifest["timings"]) == 2


def test_reproduce_on_a_users_checkpoint_and_data(smoke_env, exported, tmp_path):
    """`reproduce --backbone B --data D --config FILE`: every stage on a user's checkpoint and a data
    folder divided into exit_train / val / test, the file's settings in the manifest."""
    from free_bench.models.random_checkpoint import save_random_blip2

    ckpt = save_random_blip2(tmp_path / "ckpt", "tiny-opt")
    files = exported["root"] / "files" / "test"
    data = tmp_path / "data"
    _ok(cli("data", "--dataset", "vqav2", "--questions", str(files / "questions.json"), "--annotations",
            str(files / "annotations.json"), "--images", str(files / "images"), "--splits", "exit_train", "val",
            "test", "--out", str(data), env=smoke_env))  # fmt: skip
    config = tmp_path / "run.toml"
    config.write_text('profile = "smoke"\nname = "user-tiny"\n[exits]\nsteps = 3\nsparse = "2,4"\n'
                      '[reproduce]\nruns = ["deebert:semi"]\ntasks = ["vqa"]\ngrid = 5\nlive_rows = 4\n'
                      'live_points = 1\nbatch_sizes = []\nrobustness_runs = ["deebert:semi"]\nrobustness_rows = 4\n'
                      'perturbations = ["blur"]\nseverities = [2]\n')  # fmt: skip
    env = {**smoke_env, "FREE_BENCH_CACHE": str(tmp_path / "cache")}  # nothing of the shared cache is touched
    res = cli("reproduce", "--backbone", str(ckpt), "--data", str(data), "--config", str(config),
              "--results", str(tmp_path / "results"), env=env)  # fmt: skip
    _ok(res)
    out = tmp_path / "results" / "user-tiny"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["backbone"] == str(ckpt) and manifest["config"]["data"] == str(data.resolve())
    assert manifest["config"]["settings"]["exits"]["steps"] == 3
    assert (out / "sweeps" / "sim-deebert-semi-test" / "sweep.parquet").exists()
    assert (out / "sweeps" / "robustness" / "sweep.parquet").exists()
    assert "VQA scorer: `lavis`" in (out / "REPORT.md").read_text()
    bad = cli("reproduce", "--backbone", str(ckpt), "--results", str(tmp_path / "r2"), env=env)
    assert bad.returncode != 0 and "--data" in bad.stderr and not (tmp_path / "r2").exists()


def test_a_pretrained_folder_loaded_by_path_is_asked_as_it_was_trained(smoke_env):
    """The embedded backbone's folder carries its prompts: loaded by path (as pretraining's own quality
    evaluation loads it), it is not asked with LAVIS's prompts, which its vocabulary lacks."""
    from free_bench.models.load import load_backbone
    from free_bench.models.prompts import EMBEDDED, read_prompts

    folder = Path(smoke_env["FREE_BENCH_CACHE"]) / "backbones" / "embedded-smoke-seed0"
    assert read_prompts(folder) == EMBEDDED
    assert load_backbone(str(folder), device="cpu").prompts == EMBEDDED
