"""`free-bench export-backbone SPEC DIR` on the smoke profile: writes a checkpoint, reuses it, and
refuses what it cannot export without writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(smoke_env: dict) -> dict:
    return smoke_env


def test_export_writes_a_checkpoint_and_a_rerun_reuses_it(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    res = cli("export-backbone", "embedded:smoke", str(out), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(out.resolve())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "prompts.json", "export.json"} <= {p.name for p in out.iterdir()}  # fmt: skip
    record = json.loads((out / "export.json").read_text())
    assert record["command"] == "export-backbone" and record["config"]["spec"] == "embedded:smoke"
    assert (
        json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    again = cli("export-backbone", "embedded:smoke", str(out), env=env)
    assert again.returncode == 0 and "already exported" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]  # no temp folder or lock left


@pytest.mark.parametrize(
    "args, needle",
    [
        (["Salesforce/blip2-opt-2.7b"], "an HF id or folder already is a checkpoint"),
        (["embedded:huge"], "unknown profile 'huge'"),
        (["embedded:smoke", "--backbone-seed", "-1"], "must be >= 0"),
        (["embedded:smoke-t5"], "free-bench pretrain --profile smoke --lm t5"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(
    env: dict, tmp_path: Path, args: list[str], needle: str
) -> None:
    spec, *flags = args
    res = cli("export-backbone", spec, str(tmp_path / "out"), *flags, env=env)
    assert res.returncode == 2 and needle in res.stderr, res.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
