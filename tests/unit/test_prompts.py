"""Prompts: LAVIS's per LM family, the embedded backbone's own, a checkpoint's prompts.json, --prompt."""

from __future__ import annotations

import json

import pytest

from free_bench.core.errors import FreeBenchError
from free_bench.data import examples as E
from free_bench.models.hf import backbone_from_model
from free_bench.models.load import load_backbone
from free_bench.models.prompts import EMBEDDED, LAVIS, check_prompts, read_prompts, resolve_prompts
from free_bench.models.random_checkpoint import save_random_blip2
from free_bench.models.tiny import build_tiny_blip2


def test_lavis_prompts_per_family():
    assert resolve_prompts("opt") == {"vqa": "Question: {} Answer:", "caption": "a photo of"}
    assert resolve_prompts("t5")["vqa"] == "Question: {} Short answer:"
    assert resolve_prompts("opt", override={"vqa": "Q: {} A:"})["vqa"] == "Q: {} A:"
    assert resolve_prompts("opt", own={"caption": "x"}, override={"caption": None})["caption"] == "x"


@pytest.mark.parametrize("bad", ["Question: Answer:", "{} and {}", "Q: {0} A:", "Q: {} {x}", ""])
def test_a_vqa_prompt_needs_one_slot(bad):
    with pytest.raises(FreeBenchError, match="prompt"):
        check_prompts({"vqa": bad})


def test_unknown_task_is_refused():
    with pytest.raises(FreeBenchError, match="unknown task"):
        check_prompts({"vqa": "Q: {} A:", "detection": "x"})


def test_in_memory_backbones_get_their_familys_prompts_and_embedded_ones_their_own():
    model = build_tiny_blip2("t5")
    assert backbone_from_model(model).prompts == LAVIS["t5"]
    assert backbone_from_model(build_tiny_blip2("opt"), spec="embedded:smoke").prompts == EMBEDDED


def test_the_embedded_vqa_prompt_tokenizes_as_before():
    """The template form ("question: {} answer:") gives the ids the old keyword form gave."""
    from free_bench.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    pair = E.vqa_pair(tok, "what color is the circle?", "red")
    assert pair.prompt == E.encode(tok, "question: what color is the circle? answer:")
    # LAVIS's OPT prompt differs only in case, which the word-level tokenizer folds
    assert E.vqa_pair(tok, "is there a cube?", "", LAVIS["opt"]["vqa"]).prompt == E.vqa_pair(tok, "is there a cube?", "").prompt


def test_a_checkpoint_folder_carries_its_prompts(tmp_path):
    folder = save_random_blip2(tmp_path / "ckpt", "tiny-opt")
    assert read_prompts(folder) is None
    bb = load_backbone(str(folder), device="cpu")
    assert bb.prompts == LAVIS["opt"] and bb.spec == str(folder.resolve())
    (folder / "prompts.json").write_text(json.dumps({"vqa": "Q: {} A:"}))
    assert load_backbone(str(folder), device="cpu").prompts == {"vqa": "Q: {} A:", "caption": "a photo of"}
    over = load_backbone(str(folder), device="cpu", prompts={"caption": "an image of"})
    assert over.prompts == {"vqa": "Q: {} A:", "caption": "an image of"}
    (folder / "prompts.json").write_text(json.dumps({"vqa": "no slot"}))
    with pytest.raises(FreeBenchError, match="prompts.json"):
        load_backbone(str(folder), device="cpu")


def test_a_blip2_folder_without_processor_is_named(tmp_path):
    folder = save_random_blip2(tmp_path / "ckpt", "tiny-t5")
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    bb = load_backbone(str(folder), device="cpu")  # the engine runs on token ids without one
    from free_bench.data.inputs import pixel_values

    with pytest.raises(FreeBenchError, match="holds no processor"):
        pixel_values(bb, [])


def test_a_folder_that_is_not_a_blip2_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FreeBenchError, match="not a BLIP-2"):
        load_backbone(str(tmp_path), device="cpu")
