"""`free-bench pretrain` on the smoke profile, and `load_backbone('embedded:smoke')` from its cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.integration


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "free_bench", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pretrained(cache):
    import os

    env = {**os.environ, "FREE_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    res = _cli("pretrain", "--profile", "smoke", "--device", "cpu", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_pretrain_writes_weights_manifest_and_quality(pretrained, cache):
    out = cache / "backbones" / "embedded-smoke-seed0"
    assert (out / "model.safetensors").exists() and (out / "manifest.json").exists()
    assert not (out / "_pretrain_state").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    quality = manifest["quality"]
    assert set(quality["vqa_accuracy_by_type"]) <= {"exist", "color", "shape", "size", "count", "relation"}
    assert 0.0 <= quality["vqa_accuracy"] <= 1.0
    assert sorted(quality["logit_lens"]) == ["1", "2", "3", "4"] or sorted(quality["logit_lens"]) == [
        1,
        2,
        3,
        4,
    ]
    assert "CIDEr" in quality["captions"] or "missing" in quality["captions"]
    assert len(manifest["loss_curves"]["1"]) == 40 and len(manifest["loss_curves"]["2"]) == 60


def test_rerun_reuses_and_load_backbone_reads_cache(pretrained, cache, monkeypatch):
    import os

    env = {**os.environ, "FREE_BENCH_CACHE": str(cache)}
    res = _cli("pretrain", "--profile", "smoke", "--device", "cpu", env=env)
    assert res.returncode == 0 and "already pretrained" in res.stderr
    monkeypatch.setenv("FREE_BENCH_CACHE", str(cache))
    from free_bench import load_backbone

    bb = load_backbone("embedded:smoke")
    assert bb.lm_type == "opt" and bb.num_layers == 4 and bb.tokenizer is not None
    assert bb.spec == "embedded:smoke" and bb.dtype == torch.float32


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--profile", "huge"], "invalid choice: 'huge'"),
        (["--profile", "smoke", "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_pretrain_bad_input(tmp_path, args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    res = _cli("pretrain", *args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and needle in res.stderr
    assert not (tmp_path / "o").exists()


def test_score_captions_from_saved_predictions(pretrained, cache, tmp_path):
    """The GPU workflow: predictions saved where pycocoevalcap is missing, scored later on a CPU box."""
    quality = cache / "backbones" / "embedded-smoke-seed0" / "quality.json"
    out = tmp_path / "scores.json"
    res = _cli("score-captions", str(quality), "--profile", "smoke", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    scores = json.loads(out.read_text())["scores"]
    assert {"BLEU-4", "METEOR", "ROUGE_L", "CIDEr"} <= set(scores)
    bad = _cli("score-captions", str(tmp_path / "nope.json"), "--profile", "smoke")
    assert bad.returncode == 2 and "nope.json" in bad.stderr
