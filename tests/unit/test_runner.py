"""Invariants of the layer-by-layer runner: it IS the HF model, token for token, layer for layer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, LlamaConfig

from free_bench.core.errors import FreeBenchError
from free_bench.engine import generate
from free_bench.engine.cost import cost_model
from free_bench.models import Backbone, from_hf
from free_bench.models import runner as R
from free_bench.models.tiny import build_tiny_blip2, tiny_blip2_config, tiny_inputs

N_NEW = 12
pytestmark = pytest.mark.usefixtures("single_thread")


def hf_new_tokens(bb: Backbone, inputs: dict, n: int) -> torch.Tensor:
    """HF generate's new tokens: OPT BLIP-2 returns prompt + new ids, T5 the decoder start + new ids."""
    out = bb.model.generate(**inputs, do_sample=False, max_new_tokens=n)
    return out[:, inputs["input_ids"].shape[1] :] if bb.lm_type == "opt" else out[:, 1:]


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_matches_hf_generate(tiny_backbone: Backbone, batch: int) -> None:
    inputs = tiny_inputs(tiny_backbone.model, batch, padded=True, seed=batch)
    if batch > 1:  # left padding (OPT) / encoder-side padding (T5) really present
        assert not bool(inputs["attention_mask"].all())
    ours = generate(tiny_backbone, **inputs, max_new_tokens=N_NEW)
    ref = hf_new_tokens(tiny_backbone, inputs, N_NEW)
    assert ours.tokens.shape == ref.shape == (batch, N_NEW)  # >= 8 tokens really generated
    assert torch.equal(ours.tokens, ref)
    assert len(set(ref.flatten().tolist())) >= 3, "degenerate test: one repeated token"
    # Full depth up to and including a row's EOS, 0 on the padding after it.
    eos = tiny_backbone.language_model.generation_config.eos_token_id
    after_eos = (ref == eos).long().cumsum(dim=1) - (ref == eos).long() > 0
    expected = torch.where(after_eos, 0, tiny_backbone.num_layers)
    assert torch.equal(ours.exit_layers, expected)
    assert ours.cost_layers == ours.full_cost_layers and ours.expected_speedup == 1.0
    assert ours.text is None  # no tokenizer on the tiny models


@pytest.mark.parametrize("lm_type", ["opt", "t5"])
def test_greedy_matches_hf_generate_eager_attention(lm_type: str) -> None:
    """Eager attention takes additive float masks instead of sdpa's bool ones; same tokens."""
    model = build_tiny_blip2(lm_type, seed=1)
    model.set_attn_implementation("eager")
    bb = from_hf(model)
    inputs = tiny_inputs(model, 3, seed=3)
    assert torch.equal(generate(bb, **inputs, max_new_tokens=N_NEW).tokens, hf_new_tokens(bb, inputs, N_NEW))


def test_default_prompt_matches_hf(tiny_opt_backbone: Backbone) -> None:
    """input_ids=None means HF's default prompt: the image placeholders then BOS."""
    bb = tiny_opt_backbone
    pixels = tiny_inputs(bb.model, 2)["pixel_values"]
    ref = bb.model.generate(pixel_values=pixels, do_sample=False, max_new_tokens=8)
    ours = generate(bb, pixel_values=pixels, input_ids=None, max_new_tokens=8)
    assert torch.equal(ours.tokens, ref[:, bb.model.config.num_query_tokens + 1 :])


def test_eos_stops_rows_and_pads(tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that emits EOS is padded afterwards, like HF; decoding stops when all rows are done."""
    inputs = tiny_inputs(tiny_backbone.model, 3, seed=3)
    free_run = hf_new_tokens(tiny_backbone, inputs, N_NEW)[0].tolist()
    gen = tiny_backbone.language_model.generation_config
    # Row 0 stops at its first new id from the third token on; other rows when they emit it.
    stop = next(i for i in range(2, N_NEW) if free_run[i] not in free_run[:i] + [gen.pad_token_id])
    eos = free_run[stop]
    monkeypatch.setattr(gen, "eos_token_id", eos)
    ours = generate(tiny_backbone, **inputs, max_new_tokens=N_NEW)
    ref = hf_new_tokens(tiny_backbone, inputs, N_NEW)
    assert torch.equal(ours.tokens, ref)
    pad = gen.pad_token_id
    assert ours.tokens[0, stop] == eos and bool((ours.tokens[0, stop + 1 :] == pad).all())
    assert bool((ours.exit_layers[0, stop + 1 :] == 0).all()) and bool(
        (ours.exit_layers[0, : stop + 1] > 0).all()
    )
    assert ours.cost_layers == pytest.approx(
        float((ours.exit_layers > 0).sum()) * cost_model(tiny_backbone).full
    )


def test_teacher_forced_matches_hf_forward(tiny_backbone: Backbone) -> None:
    bb = tiny_backbone
    inputs = tiny_inputs(bb.model, 3, seed=5)
    targets = torch.randint(4, 90, (3, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if bb.lm_type == "opt":
            out = R.teacher_forced_hidden_states(bb, **inputs, target_ids=targets)
            full = torch.cat([inputs["input_ids"], targets], dim=1)
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(targets)], dim=1)
            hf = bb.model(
                pixel_values=inputs["pixel_values"],
                input_ids=full,
                attention_mask=mask,
                output_hidden_states=True,
            )
            hf_states = hf.language_model_outputs.hidden_states
            real = mask.bool()
        else:
            out = R.teacher_forced_hidden_states(bb, **inputs, target_ids=targets)
            dec = bb.language_model._shift_right(targets)
            hf = bb.model(**inputs, decoder_input_ids=dec, output_hidden_states=True)
            hf_states = hf.language_model_outputs.decoder_hidden_states
            real = torch.ones_like(dec, dtype=torch.bool)
        logits = bb.logits_from_hidden(out.hidden_states[-1])
    length = real.shape[1]
    assert out.hidden_states.shape == (bb.num_layers + 1, 3, length, bb.lm_config.hidden_size)
    torch.testing.assert_close(logits[real], hf.logits[real], atol=1e-5, rtol=1e-6)
    # Every intermediate layer too (HF's last entry is post-final-norm, checked via the logits above).
    for ours, theirs in zip(out.hidden_states[:-1], hf_states[:-1], strict=True):
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)
    # target_slice lines up predictions with targets.
    assert logits[:, out.target_slice].shape[1] == targets.shape[1]


def test_step_layers_on_row_subsets_matches_full_batch(tiny_backbone: Backbone) -> None:
    """Running deep layers for row subsets (as exits will) gives the full-batch result and cache."""
    bb, n_layers, split = tiny_backbone, tiny_backbone.num_layers, 2
    inputs = tiny_inputs(bb.model, 3, seed=7)
    with torch.inference_mode():
        full = R.start_decoding(bb, **inputs, max_new_tokens=6)
        part = R.start_decoding(bb, **inputs, max_new_tokens=6)
        ids = full.start_ids if full.start_ids is not None else torch.tensor([5, 6, 7])
        for _ in range(5):
            h_full = R.step_layers(full, R.begin_token(full, ids), 0, n_layers)
            R.end_token(full)
            h = R.step_layers(part, R.begin_token(part, ids), 0, split)  # shallow: all rows
            out = torch.empty_like(h)
            for rows in (torch.tensor([0, 2]), torch.tensor([1])):
                out[rows] = R.step_layers(part, h[rows], split, n_layers, rows=rows)
            R.end_token(part)
            # Other batch shapes may pick other kernels: equal up to float rounding (a row or
            # position mix-up would be off by O(1)).
            torch.testing.assert_close(out, h_full, atol=1e-4, rtol=1e-4)
            ids = bb.logits_from_hidden(h_full[:, -1]).argmax(-1)  # same inputs on both sides
    for k_full, k_part in zip(full.kv.keys, part.kv.keys, strict=True):
        torch.testing.assert_close(k_part, k_full, atol=1e-4, rtol=1e-4)


def test_layer_by_layer_steps_equal_one_call(tiny_backbone: Backbone) -> None:
    """Stopping after every layer (where exits look) changes nothing."""
    bb = tiny_backbone
    inputs = tiny_inputs(bb.model, 2, seed=9)
    with torch.inference_mode():
        a = R.start_decoding(bb, **inputs, max_new_tokens=2)
        b = R.start_decoding(bb, **inputs, max_new_tokens=2)
        ids = a.start_ids if a.start_ids is not None else torch.tensor([5, 6])
        h_a = R.step_layers(a, R.begin_token(a, ids), 0, bb.num_layers)
        h_b = R.begin_token(b, ids)
        for i in range(bb.num_layers):
            h_b = R.step_layers(b, h_b, i, i + 1)
            assert bb.logits_from_hidden(h_b).shape[-1] == bb.lm_config.vocab_size  # logit lens
    assert torch.equal(h_a, h_b)


def test_runner_protocol_errors(tiny_opt_backbone: Backbone) -> None:
    bb = tiny_opt_backbone
    inputs = tiny_inputs(bb.model, 1)
    with torch.inference_mode():
        state = R.start_decoding(bb, **inputs, max_new_tokens=1)
        with pytest.raises(FreeBenchError, match="begin_token"):
            R.step_layers(state, state.prompt_hidden, 0, 1)
        h = R.begin_token(state, torch.tensor([5]))
        with pytest.raises(FreeBenchError, match="end_token"):
            R.begin_token(state, torch.tensor([5]))
        with pytest.raises(FreeBenchError, match="outside"):
            R.step_layers(state, h, 2, bb.num_layers + 1)
        R.end_token(state)
        with pytest.raises(FreeBenchError, match="no room"):
            R.begin_token(state, torch.tensor([5]))
        right = {k: v.flip(1) for k, v in tiny_inputs(bb.model, 2).items() if k != "pixel_values"}
        with pytest.raises(FreeBenchError, match="left-padded"):
            R.start_decoding(bb, **dict(tiny_inputs(bb.model, 2), **right), max_new_tokens=1)
        short = {k: v[:, 1:] for k, v in inputs.items() if k != "pixel_values"}  # one image token short
        bad = dict(inputs, **short)
        with pytest.raises(FreeBenchError, match="image tokens"):
            R.start_decoding(bb, **bad, max_new_tokens=1)


def test_check_layer_bounds(tiny_opt_backbone: Backbone) -> None:
    bb = tiny_opt_backbone
    assert bb.check_layer(1) == 1 and bb.check_layer(bb.num_layers) == bb.num_layers
    for bad in (0, -1, bb.num_layers + 1, 1.0, True, "2"):
        with pytest.raises(FreeBenchError, match="layer index"):
            bb.check_layer(bad)


def test_generate_validates_inputs(tiny_opt_backbone: Backbone) -> None:
    inputs = tiny_inputs(tiny_opt_backbone.model, 1)
    for bad in (0, -3, 2.5):
        with pytest.raises(FreeBenchError, match="max_new_tokens"):
            generate(tiny_opt_backbone, **inputs, max_new_tokens=bad)
    with pytest.raises(FreeBenchError, match="deferred, full, propagate"):
        generate(tiny_opt_backbone, **inputs, kv_policy="lazy")
    with pytest.raises(FreeBenchError, match="exits must be an ExitMethod"):
        generate(tiny_opt_backbone, object(), **inputs)
    with pytest.raises(FreeBenchError, match="threshold needs exits"):
        generate(tiny_opt_backbone, **inputs, threshold=0.5)


def test_backbone_accessors(tiny_backbone: Backbone) -> None:
    bb = tiny_backbone
    assert bb.device == torch.device("cpu") and bb.dtype == torch.float32
    assert len(bb.layers) == bb.num_layers and bb.final_norm is not None
    assert bb.lm_head.weight.shape[0] == bb.lm_config.vocab_size


def test_from_hf_unknown_id_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake = "free-bench-tests/no-such-blip2"
    with pytest.raises(FreeBenchError, match="huggingface-cli download") as err:
        from_hf(fake, device="cpu")
    assert fake in str(err.value) and "local directory" in str(err.value)


def test_from_hf_rejects_non_blip2_directories(tmp_path) -> None:
    with pytest.raises(FreeBenchError, match="no config.json"):
        from_hf(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FreeBenchError, match="'bert'.*not a BLIP-2"):
        from_hf(tmp_path, device="cpu")
    with pytest.raises(FreeBenchError, match="does not exist"):
        from_hf(str(tmp_path / "missing") + "/", device="cpu")


def test_from_hf_local_directory_round_trip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_blip2("opt", seed=1)
    model.save_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = from_hf(tmp_path, device="cpu")
    assert bb.lm_type == "opt" and bb.num_layers == 4 and bb.dtype == torch.float32
    assert bb.processor is None and bb.tokenizer is None and bb.spec == str(tmp_path)
    inputs = tiny_inputs(model, 1)
    assert torch.equal(generate(bb, **inputs, max_new_tokens=4).tokens, hf_new_tokens(bb, inputs, 4))


def test_from_hf_rejects_other_lms_and_missing_cuda() -> None:
    llama = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    base = tiny_blip2_config("opt")
    cfg = Blip2Config(vision_config=base.vision_config, qformer_config=base.qformer_config, text_config=llama)
    with pytest.raises(FreeBenchError, match="'llama' is not supported"):
        from_hf(Blip2ForConditionalGeneration(cfg))
    if not torch.cuda.is_available():
        with pytest.raises(FreeBenchError, match="CUDA is not available"):
            from_hf(build_tiny_blip2("opt"), device="cuda")
    with pytest.raises(FreeBenchError, match="unknown dtype"):
        from_hf(build_tiny_blip2("opt"), dtype="fp8")
