"""`export_backbone`: an exported embedded backbone is a real checkpoint, read by plain transformers
exactly as free-bench ran the embedded one, and by free-bench with the same prompts and identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from free_bench.core.errors import FreeBenchError
from free_bench.methods.storage import fingerprint
from free_bench.models import export as X
from free_bench.models.embedded_cache import check_current, embedded_dir
from free_bench.models.load import load_backbone
from free_bench.models.prompts import EMBEDDED

SPEC = "embedded:smoke"
TEXTS = [
    "question: is there a red star? answer:",
    "how many CIRCLES are left of the cube?",
    "a picture of",
    "zebra!",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of its own holding embedded:smoke twice, as pretraining seeds 0 and 1: seed 0 copied from
    the user's cache when that holds a current one (else pretrained here, ~15 s), seed 1 the same
    weights recorded as another pretraining, so "another export" needs no second training."""
    mine = embedded_dir(SPEC, 0)
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREE_BENCH_CACHE", str(root))
        seed0 = embedded_dir(SPEC, 0)
        try:
            check_current(mine, "smoke", "opt")
            shutil.copytree(mine, seed0, ignore=shutil.ignore_patterns("_pretrain_state"))
        except (FileNotFoundError, FreeBenchError):
            from free_bench.pipeline.backbone import pretrain_into

            pretrain_into(seed0, "smoke", "opt", device="cpu", evaluate=False)
        seed1 = embedded_dir(SPEC, 1)
        shutil.copytree(seed0, seed1)
        manifest = json.loads((seed1 / "manifest.json").read_text())
        (seed1 / "manifest.json").write_text(json.dumps({**manifest, "seeds": [1]}))
        yield root


@pytest.fixture(scope="module")
def exported(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return X.export_backbone(SPEC, tmp_path_factory.mktemp("export") / "smoke")


@pytest.fixture(scope="module")
def embedded(cache: Path):
    return load_backbone(SPEC, device="cpu")


def _image() -> Image.Image:
    """Not at the processor's size, so the resize is exercised too."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8))


def test_folder_holds_a_checkpoint_prompts_and_provenance(exported: Path, cache: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
            "tokenizer_config.json", "prompts.json", "export.json"} <= names  # fmt: skip
    assert not any(n.endswith(".bin") for n in names)
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "is_local" not in config and "local_files_only" not in config
    assert json.loads((exported / "prompts.json").read_text()) == EMBEDDED
    record = json.loads((exported / "export.json").read_text())
    source = embedded_dir(SPEC, 0)
    made = json.loads((source / "manifest.json").read_text())
    assert record["command"] == "export-backbone" and record["seeds"] == [0]
    assert record["config"]["spec"] == SPEC and record["config"]["seed"] == 0
    assert record["config"]["source"]["config"] == made["config"]  # the recipe
    assert record["config"]["source"]["source_hash"] == made["source_hash"]
    assert record["config"]["source"]["weights_sha256"] == X._sha256(source / "model.safetensors")
    assert record["source_folder"] == str(source)


def test_plain_transformers_reads_the_same_model(exported: Path, embedded, single_thread) -> None:
    model = Blip2ForConditionalGeneration.from_pretrained(exported).eval()
    config = lambda m: {k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert config(model) == config(embedded.model)
    assert model.generation_config.to_dict() == embedded.model.generation_config.to_dict()
    mine, theirs = embedded.model.state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    processor = Blip2Processor.from_pretrained(exported)
    prompt = EMBEDDED["vqa"].format("is there a red star?")
    inputs = processor(images=[_image()], text=[prompt], return_tensors="pt")
    want = embedded.processor(images=[_image()], text=[prompt], return_tensors="pt")
    assert inputs.keys() == want.keys() and all(torch.equal(inputs[k], want[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, embedded.model(**want).logits)


def test_plain_transformers_reads_the_same_tokenizer_and_pixels(exported: Path, embedded) -> None:
    """In a process that never imports free_bench: nothing of ours is needed to read the folder."""
    code = f"""
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoTokenizer, Blip2Processor
folder, texts = {str(exported)!r}, {TEXTS!r}
out = {{}}
proc = Blip2Processor.from_pretrained(folder)
for name, tok in (("auto", AutoTokenizer.from_pretrained(folder)), ("processor", proc.tokenizer)):
    ids = tok(texts)["input_ids"]
    out[name] = dict(ids=ids, decoded=tok.batch_decode(ids), special=tok.special_tokens_map,
                     padding_side=tok.padding_side, cls=type(tok).__name__)
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8))
out["pixels"] = proc.image_processor(images=[image], return_tensors="np")["pixel_values"].tolist()
out["image_processor"] = type(proc.image_processor).__name__
out["num_query_tokens"] = proc.num_query_tokens
out["free_bench_imported"] = any(m.split(".")[0] == "free_bench" for m in sys.modules)
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["free_bench_imported"] is False
    tok = embedded.tokenizer
    ids = tok(TEXTS)["input_ids"]
    assert tok.unk_token_id in ids[-1]  # a word outside the vocabulary maps to <unk> on both sides
    for name in ("auto", "processor"):
        assert got[name]["ids"] == ids
        assert got[name]["decoded"] == tok.batch_decode(ids)
        assert got[name]["special"] == tok.special_tokens_map
        assert got[name]["padding_side"] == tok.padding_side == "left"
    pixels = embedded.processor.image_processor(images=[_image()], return_tensors="np")["pixel_values"]
    assert np.array_equal(np.asarray(got["pixels"], dtype=pixels.dtype), pixels)
    assert got["image_processor"] == type(embedded.processor.image_processor).__name__
    assert got["num_query_tokens"] == embedded.processor.num_query_tokens


def test_free_bench_loads_it_by_path_with_the_embedded_prompts(exported: Path, embedded) -> None:
    backbone = load_backbone(str(exported), device="cpu")
    assert backbone.spec == str(exported.resolve()) and Path(backbone.spec).is_absolute()
    assert backbone.prompts == EMBEDDED == embedded.prompts
    assert fingerprint(backbone) == fingerprint(embedded)
    assert backbone.lm_type == embedded.lm_type and backbone.num_layers == embedded.num_layers


@pytest.mark.parametrize(
    "spec, needle",
    [
        (
            "Salesforce/blip2-opt-2.7b",
            "exports an embedded backbone; an HF id or folder already is a checkpoint",
        ),
        ("/some/checkpoint", "exports an embedded backbone"),
        ("embedded:nope", "unknown profile 'nope'"),
        ("embedded:smoke-t5", "is not pretrained yet"),
    ],
)
def test_bad_specs_are_errors_that_write_nothing(cache: Path, tmp_path: Path, spec: str, needle: str) -> None:
    with pytest.raises(FreeBenchError, match=needle):
        X.export_backbone(spec, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_rerun_reuses_another_export_needs_overwrite(cache: Path, tmp_path: Path, monkeypatch) -> None:
    out = X.export_backbone(SPEC, tmp_path / "out")
    stamp = (out / "export.json").stat().st_mtime_ns
    assert X.export_backbone(SPEC, out) == out
    assert (out / "export.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FreeBenchError, match=r"seed: 0 recorded, 1 asked.*--overwrite"):
        X.export_backbone(SPEC, out, seed=1)
    assert json.loads((out / "export.json").read_text())["config"]["seed"] == 0
    X.export_backbone(SPEC, out, seed=1, overwrite=True)
    assert json.loads((out / "export.json").read_text())["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder, old copy or lock left


def test_a_folder_that_is_not_an_export_is_never_replaced(cache: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FreeBenchError, match="holds no exported backbone"):
            X.export_backbone(SPEC, mine, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_failed_export_leaves_nothing(cache: Path, tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(X, "write_prompts", fail)
    with pytest.raises(OSError, match="disk full"):
        X.export_backbone(SPEC, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_that_would_load_back_otherwise_is_refused(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    """The round-trip guard: were the saved config to lose the left padding, nothing is written."""
    name = X._name_tokenizer_class

    def lose_padding_side(folder: Path) -> None:
        name(folder)
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "padding_side": "right"}))

    monkeypatch.setattr(X, "_name_tokenizer_class", lose_padding_side)
    with pytest.raises(FreeBenchError, match="loads back through AutoTokenizer .* with other padding side"):
        X.export_backbone(SPEC, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
