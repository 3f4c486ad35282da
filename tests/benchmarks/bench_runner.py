"""Full-model greedy decoding: layer runner vs HF `generate()`, on BLIP-2 OPT-2.7b's LM shape.

The runner is the baseline every early-exit speedup is measured against, so it must not be slower
than HF itself. Random weights (nothing downloaded), a tiny vision tower, bf16, EOS disabled so
both decode exactly `NEW_TOKENS` tokens. Run with `pytest tests/benchmarks` on a CUDA machine;
the host-overhead comparison runs on CPU too.
"""

from __future__ import annotations

import pytest
import torch

from free_bench.engine import generate, time_region
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

_NO_CUDA = not torch.cuda.is_available()


def needs_cuda(fn):
    return pytest.mark.gpu(pytest.mark.skipif(_NO_CUDA, reason="needs CUDA")(fn))


NEW_TOKENS = 32
# BLIP-2 OPT-2.7b's language model (facebook/opt-2.7b) and Q-Former query count.
OPT_2_7B = dict(
    vocab_size=50272,
    hidden_size=2560,
    word_embed_proj_dim=2560,
    ffn_dim=10240,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=2048,
    init_std=0.02,
    pad_token_id=1,
    bos_token_id=2,
    eos_token_id=None,  # no early stop: both sides decode NEW_TOKENS tokens
    num_query_tokens=32,
    image_token_index=50265,
)


def _compare(
    benchmark, bb: Backbone, inputs: dict, batch_size: int, model: str, device: str = "cuda"
) -> None:
    """Time HF generate() and the runner on the same inputs, interleaved in rounds so that drift in
    clocks or host load hits both alike; report medians over all rounds. EOS is off on both sides."""
    gen_cfg, lm_cfg = bb.model.language_model.generation_config, bb.lm_config
    eos = gen_cfg.eos_token_id, lm_cfg.eos_token_id
    gen_cfg.eos_token_id = lm_cfg.eos_token_id = None  # both sides decode exactly NEW_TOKENS tokens

    def run_hf() -> torch.Tensor:
        return bb.model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)

    def run_ours() -> torch.Tensor:
        return generate(bb, **inputs, max_new_tokens=NEW_TOKENS).tokens

    try:
        ours_tokens = run_ours()
        hf_tokens = run_hf()[:, inputs["input_ids"].shape[1] :]
        assert ours_tokens.shape == hf_tokens.shape == (batch_size, NEW_TOKENS)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        kw = dict(warmup=2, repeats=5, device=device, dtype=dtype, batch_size=batch_size)
        rounds = [(time_region(run_hf, **kw), time_region(run_ours, **kw)) for _ in range(4)]
        benchmark.pedantic(run_ours, rounds=3, warmup_rounds=1, iterations=1)  # pytest-benchmark's table
    finally:
        gen_cfg.eos_token_id, lm_cfg.eos_token_id = eos
    hf_ms = torch.tensor([t for h, _ in rounds for t in h.samples_ms]).median().item()
    ours_ms = torch.tensor([t for _, o in rounds for t in o.samples_ms]).median().item()
    benchmark.extra_info.update(
        {
            "model": model,
            "new_tokens": NEW_TOKENS,
            "batch_size": batch_size,
            "ms_per_token_runner": ours_ms / NEW_TOKENS,
            "ms_per_token_hf": hf_ms / NEW_TOKENS,
            "ratio_runner_over_hf": ours_ms / hf_ms,
            "ratio_per_round": [o.median_ms / h.median_ms for h, o in rounds],
            "tokens_equal_hf": bool(torch.equal(ours_tokens, hf_tokens)),
            "timing_runner": rounds[0][1].as_record(),
            "timing_hf": rounds[0][0].as_record(),
        }
    )


@pytest.fixture(scope="module")
def opt27_backbone() -> Backbone:
    model = build_tiny_blip2("opt", seed=0, device="cuda", dtype=torch.bfloat16, **OPT_2_7B)
    return from_hf(model)


@needs_cuda
@pytest.mark.parametrize("batch_size", [1, 8])
def test_runner_vs_hf_generate(benchmark, opt27_backbone: Backbone, batch_size: int) -> None:
    bb = opt27_backbone
    inputs = {k: v.to("cuda") for k, v in tiny_inputs(bb.model, batch_size, text_len=8, seed=0).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    _compare(benchmark, bb, inputs, batch_size, "random-init OPT-2.7b LM shape")


@pytest.fixture(scope="module")
def embedded_gpu_backbone() -> Backbone:
    from free_bench.core.errors import FreeBenchError
    from free_bench.models import load_backbone

    try:
        return load_backbone("embedded:gpu", device="cuda", dtype=torch.bfloat16)
    except FreeBenchError as e:
        pytest.skip(str(e))


@needs_cuda
@pytest.mark.parametrize("batch_size", [1, 8])
def test_embedded_gpu_runner_vs_hf_generate(
    benchmark, embedded_gpu_backbone: Backbone, batch_size: int
) -> None:
    """The same comparison on the embedded gpu profile, on real `scenes` VQA prompts."""
    from free_bench.data import examples as E
    from free_bench.data.inputs import pixel_values, prompt_batch
    from free_bench.data.scenes_dataset import load_scenes

    bb = embedded_gpu_backbone
    rows = load_scenes("gpu", 0, progress=False)["test"].select(range(batch_size))
    pairs = [E.vqa_pair(bb.tokenizer, q, "") for q in rows["question"]]
    inputs = {"pixel_values": pixel_values(bb, rows["image"]), **prompt_batch(bb, pairs)}
    _compare(benchmark, bb, inputs, batch_size, "embedded:gpu")


@pytest.mark.parametrize("batch_size", [1, 8])
def test_host_overhead_runner_vs_hf_generate(benchmark, batch_size: int) -> None:
    """Host-side cost per token on CPU: 32 layers of width 64, where the arithmetic is negligible and the
    time is Python and dispatch, i.e. what a launch-bound GPU loop pays per layer (timer=cpu_wall)."""
    torch.set_num_threads(1)
    model = build_tiny_blip2(
        "opt",
        0,
        num_hidden_layers=32,
        hidden_size=64,
        word_embed_proj_dim=64,
        ffn_dim=256,
        num_attention_heads=4,
    )
    bb = from_hf(model)
    inputs = tiny_inputs(bb.model, batch_size, text_len=8, seed=0)
    _compare(benchmark, bb, inputs, batch_size, "OPT 32 layers x width 64 (host overhead)", device="cpu")
